r"""Contrastive learning on 32x32 patches of one MVTec category.

"Vanilla Contrastive" of Table 4 / Table 12: the model and loss of
configs/contrastive.py (MLP head [512x8, 128], temperature 0.2, batch 32),
trained on random 32x32 crops of the 256x256-resized train/good images and
evaluated by dense KDE scoring at stride 4 (oneclass_jax/mvtec).

  mkdir -p /tmp/mvtec && tar xzf ../shared/data/magnetic_tile_mvtec_layout.tar.gz -C /tmp/mvtec
  python -m oneclass_jax.main \
      --config=configs/mvtec_contrastive.py:category=magnetic_tile,root=/tmp/mvtec \
      --workdir=/tmp/oneclass/mvtec_contrastive_magnetic_tile
  python -m oneclass_jax.main \
      --config=configs/mvtec_contrastive.py:root=/tmp/mvtec,runlocal \
      --workdir=/tmp/oneclass/mvtec_contrastive_local
"""
from oneclass_jax import mvtec


def get_config(arg=None):
  c = mvtec.base_config(arg)
  c.method = "contrastive"
  c.batch_size = 32
  c.lock()
  return c
