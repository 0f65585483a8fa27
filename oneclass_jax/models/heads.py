"""Projection head g and the rotation classifier q (paper sections 3.1.1-3.1.2).

The head runs on the representation f (`pools`) during training only; the
one-class detectors use f itself unless told otherwise. Dense layers use the
Keras defaults of the authors' code: glorot_uniform kernels and zero biases.
"""
import flax.linen as nn

from oneclass_jax.models import resnet

dense_init = nn.initializers.glorot_uniform()


class MLPHead(nn.Module):
  """g: `depth` x [Dense(width, no bias) -> BN -> ReLU], then Dense(out_dim).

  How the authors' `head_dims` map onto these fields (their `get_head`):

  * contrastive, head_dims 512x8,128: depth=8, width=512, out_dim=128,
    out_bias=False (2,170,880 parameters on a 512-d f);
  * rotation, head_dims 512x8: depth=7, width=512, out_dim=512,
    out_bias=True, followed by `Classifier(4)` on the output.

  Special cases:

  * depth=0, out_dim=None: the identity g(x) = x, i.e. the plain RotNet of
    Golan & El-Yaniv / Hendrycks et al. when followed by a Classifier;
  * depth=0 with an out_dim: a single linear layer Dense(out_dim);
  * depth>0 with out_dim=None is rejected, because the authors' head always
    ends in a linear layer.

  Attributes:
    depth: number of hidden [Dense -> BN -> ReLU] layers, >= 0.
    width: units of each hidden layer.
    out_dim: units of the final linear layer, or None (only with depth=0).
    out_bias: whether the final linear layer has a bias (the authors use one
      only when a classifier follows, i.e. for rotation prediction).
    bn_axis_name: mapped axis for cross-replica BatchNorm, or None.
  """
  depth: int
  width: int = 512
  out_dim: int | None = 128
  out_bias: bool = False
  bn_axis_name: str | None = None

  def __post_init__(self):
    if self.depth < 0:
      raise ValueError(f'MLPHead depth must be >= 0, got {self.depth}.')
    if self.width <= 0:
      raise ValueError(f'MLPHead width must be > 0, got {self.width}.')
    if self.out_dim is None and self.depth > 0:
      raise ValueError(f'MLPHead out_dim=None (identity) needs depth=0, got '
                       f'depth={self.depth}; give an out_dim for a deep head.')
    if self.out_dim is not None and self.out_dim <= 0:
      raise ValueError(f'MLPHead out_dim must be > 0 or None, got '
                       f'{self.out_dim}.')
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool):
    for i in range(self.depth):
      x = nn.Dense(self.width, use_bias=False, kernel_init=dense_init,
                   name=f'proj_{i}')(x)
      x = resnet.batch_norm(train, self.bn_axis_name, name=f'proj_bn_{i}')(x)
      x = nn.relu(x)
    if self.out_dim is None:
      return x
    return nn.Dense(self.out_dim, use_bias=self.out_bias,
                    kernel_init=dense_init, bias_init=nn.initializers.zeros,
                    name='embeds')(x)


class Classifier(nn.Module):
  """q: a linear layer to `num_classes` logits (4 rotation classes)."""
  num_classes: int

  def __post_init__(self):
    if self.num_classes <= 0:
      raise ValueError(f'Classifier num_classes must be > 0, got '
                       f'{self.num_classes}.')
    super().__post_init__()

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.num_classes, kernel_init=dense_init,
                    bias_init=nn.initializers.zeros, name='logits')(x)

