"""Contrastive learning (Section 3.1.3, Eq. 2): "Contrastive" rows of Table 2.

Paper settings (Appendix A.4; the authors' run_contrastive.sh): ResNet-18,
MLP head [512x8, 128], temperature 0.2, batch 32, SGD lr 0.01 momentum 0.9,
L2 3e-4 on every variable, one cosine cycle, 2048 epochs; f (the pooled
512-d output) is evaluated with KDE / OC-SVM.

  python -m oneclass_jax.main --config=configs/contrastive.py:dataset=cifar10,inlier_class=0 \
      --workdir=/tmp/oneclass/contrastive_cifar10_0
  # Small CPU variant:
  python -m oneclass_jax.main --config=configs/contrastive.py:dataset=fashion_mnist,runlocal \
      --workdir=/tmp/oneclass/contrastive_local
"""
from oneclass_jax import config_lib


def get_config(arg=None):
  c = config_lib.base_config(config_lib.variant(arg))
  c.method = "contrastive"
  c.batch_size = 32
  c.lock()
  return c
