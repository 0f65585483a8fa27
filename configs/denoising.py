"""Denoising autoencoder with a ResNet-18 encoder: "Denoising" of Table 2.

The decoder reconstructs the clean image from f of a noisy copy (Gaussian
pixel noise, std `denoising.noise_std`); the paper gives no recipe for it
(docs/deviations.md). Batch 64.

  python -m oneclass_jax.main --config=configs/denoising.py:dataset=cifar10,inlier_class=0 \
      --workdir=/tmp/oneclass/denoising_cifar10_0
"""
from oneclass_jax import config_lib


def get_config(arg=None):
  c = config_lib.base_config(config_lib.variant(arg))
  c.method = "denoising"
  c.batch_size = 64
  c.lock()
  return c
