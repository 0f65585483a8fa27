r"""Rotation prediction with an MLP head on 32x32 patches of one MVTec category.

"RotNet (MLP head) + KDE" of Table 4 / Table 12: the head of configs/rotation.py
(7 x [Dense 512 -> BN -> ReLU], a linear 512-d layer with bias, the 4-way
rotation classifier), trained on random 32x32 crops of the 256x256-resized
train/good images; evaluated by dense KDE scoring at stride 4 (57x57 grid),
image score = max, Gaussian-upsampled localization map (oneclass_jax/mvtec).

  mkdir -p /tmp/mvtec && tar xzf ../shared/data/magnetic_tile_mvtec_layout.tar.gz -C /tmp/mvtec
  python -m oneclass_jax.main \
      --config=configs/mvtec_rotation.py:category=magnetic_tile,root=/tmp/mvtec \
      --workdir=/tmp/oneclass/mvtec_rotation_magnetic_tile
  # Small CPU variant (tiny network, stride 16, 2k-patch memory bank):
  python -m oneclass_jax.main \
      --config=configs/mvtec_rotation.py:root=/tmp/mvtec,runlocal \
      --workdir=/tmp/oneclass/mvtec_rotation_local
"""
from oneclass_jax import mvtec


def get_config(arg=None):
  c = mvtec.base_config(arg)
  c.method = "rotation"
  c.model.head_depth = 7
  c.model.head_out_dim = c.model.head_width
  c.model.head_out_bias = True
  c.batch_size = 64
  c.lock()
  return c
