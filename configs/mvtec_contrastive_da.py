r"""Distribution-augmented contrastive learning on 32x32 MVTec patches.

"DistAug Contrastive" of Table 4 / Table 12: as configs/mvtec_contrastive.py,
with every training crop also present under the geometric transforms of
`dist_aug` ('rot90' by default, the paper's "with rotation") as distinct
instances.

  mkdir -p /tmp/mvtec && tar xzf ../shared/data/magnetic_tile_mvtec_layout.tar.gz -C /tmp/mvtec
  python -m oneclass_jax.main \
      --config=configs/mvtec_contrastive_da.py:category=magnetic_tile,root=/tmp/mvtec \
      --workdir=/tmp/oneclass/mvtec_contrastive_da_magnetic_tile
  python -m oneclass_jax.main \
      --config=configs/mvtec_contrastive_da.py:root=/tmp/mvtec,runlocal \
      --workdir=/tmp/oneclass/mvtec_contrastive_da_local
"""
from oneclass_jax import mvtec


def get_config(arg=None):
  c = mvtec.base_config(arg, dist_aug="rot90")
  c.method = "contrastive_da"
  c.data.dist_aug = mvtec.parse_variant(arg, dist_aug="rot90").dist_aug
  c.batch_size = 32
  c.lock()
  return c
