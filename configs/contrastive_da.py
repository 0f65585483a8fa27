"""Distribution-augmented contrastive learning: "Contrastive (DA)" of Table 2.

The training set is expanded by geometric transforms treated as new instances
(`dist_aug`: 'rot90' (the paper's Table 2), 'hflip', 'rot90+hflip', or
'first<n>' for Figure 7); otherwise as configs/contrastive.py.

  python -m oneclass_jax.main --config=configs/contrastive_da.py:dataset=cifar10,inlier_class=0 \
      --workdir=/tmp/oneclass/contrastive_da_cifar10_0
  python -m oneclass_jax.main --config=configs/contrastive_da.py:dataset=cifar10,dist_aug=rot90+hflip \
      --workdir=/tmp/oneclass/contrastive_da8_cifar10_0
"""
from oneclass_jax import config_lib


def get_config(arg=None):
  arg = config_lib.variant(arg, dist_aug="rot90")
  c = config_lib.base_config(arg)
  c.method = "contrastive_da"
  c.data.dist_aug = arg.dist_aug
  c.batch_size = 32
  c.lock()
  return c
