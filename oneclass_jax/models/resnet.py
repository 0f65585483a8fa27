"""ResNet-V1 backbone f, built exactly as the authors' TF2 Keras code builds it.

The choices below trace to `model/resnet.py` and `model/resnet_util.py` of
google-research/deep_representation_one_class (see
shared/notes/original_code.md, section 2):

* Stem chosen by the image side: 32 or 64 px get a 3x3 stride-1 conv with no
  max-pool (CIFAR style); 128 or 256 px get a 7x7 stride-2 conv and a 3x3
  stride-2 max-pool.
* Post-activation basic blocks; stage widths int(64w), int(128w), int(256w),
  int(512w) with strides 1, 2, 2, 2.
* Symmetric zero padding of k//2 on every side for every kxk conv (Keras
  ZeroPadding2D + 'valid' conv). This is not 'SAME': for a stride-2 conv on an
  even-sized input 'SAME' pads only bottom/right.
* BatchNorm momentum 0.9, epsilon 1e-5 (Keras semantics:
  moving = 0.9 * moving + 0.1 * batch); convs have no bias and are initialised
  with VarianceScaling(2.0, 'fan_out', truncated normal).

The representation f is `pools`, the global average of the post-ReLU output of
the last stage.
"""
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
CIFAR_STEM_SIZES = (32, 64)
IMAGENET_STEM_SIZES = (128, 256)
SUPPORTED_SIZES = CIFAR_STEM_SIZES + IMAGENET_STEM_SIZES

STAGE_SIZES = {
    'resnet10': (1, 1, 1, 1),
    'resnet18': (2, 2, 2, 2),
    'resnet34': (3, 4, 6, 3),
}
_STAGE_WIDTHS = (64, 128, 256, 512)
_STAGE_STRIDES = (1, 2, 2, 2)

conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'truncated_normal')


def batch_norm(train: bool, axis_name: str | None, dtype: Any = jnp.float32,
               name: str | None = None) -> nn.BatchNorm:
  """The authors' BatchNorm: Keras momentum 0.9 and epsilon 1e-5.

  Statistics are always reduced in float32 (flax promotes them) and the moving
  averages use the biased (1/n) batch variance. With `axis_name` set, the
  batch statistics are averaged over that mapped axis (cross-replica BN inside
  `jax.shard_map`); with None they are per device, as under the authors'
  MirroredStrategy.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                      epsilon=BN_EPSILON, axis_name=axis_name, dtype=dtype,
                      param_dtype=jnp.float32, name=name)


def conv(features: int, kernel: int, stride: int = 1, dtype: Any = jnp.float32,
         name: str | None = None) -> nn.Conv:
  """A bias-free kxk conv with symmetric k//2 zero padding on every side."""
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False,
                 kernel_init=conv_init, dtype=dtype, param_dtype=jnp.float32,
                 name=name)


def get_stage_sizes(name: str) -> tuple[int, ...]:
  """Blocks per stage for a depth name such as 'resnet18' (case-insensitive)."""
  key = name.lower()
  if key not in STAGE_SIZES:
    raise ValueError(f'Unknown backbone {name!r}; choose one of '
                     f'{sorted(STAGE_SIZES)}.')
  return STAGE_SIZES[key]


class BasicBlock(nn.Module):
  """Post-activation basic block: relu(bn(conv(relu(bn(conv(x))))) + shortcut).

  The shortcut is a 1x1 conv with the block's stride (no padding, so a stride 2
  samples the even rows/columns) plus BN when the stride or the channel count
  changes; it is the identity otherwise.
  """
  features: int
  stride: int = 1
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    y = conv(self.features, 3, self.stride, self.dtype, name='conv1')(x)
    y = batch_norm(train, self.bn_axis_name, self.dtype, name='bn1')(y)
    y = nn.relu(y)
    y = conv(self.features, 3, 1, self.dtype, name='conv2')(y)
    y = batch_norm(train, self.bn_axis_name, self.dtype, name='bn2')(y)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = conv(self.features, 1, self.stride, self.dtype,
                      name='shortcut_conv')(x)
      shortcut = batch_norm(train, self.bn_axis_name, self.dtype,
                            name='shortcut_bn')(shortcut)
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """ResNet-V1 with basic blocks; returns the representation f and its map.

  Attributes:
    stage_sizes: blocks in each of the four stages, e.g. (2, 2, 2, 2).
    width: channel multiplier of the stages (the authors' `net_width`).
    stem_width: channels of the stem conv; the authors hard-coded 64 (it is
      not scaled by `width`), smaller values only make CPU runs cheap.
    bn_axis_name: mapped axis for cross-replica BatchNorm, or None for
      per-device statistics.
    dtype: compute dtype (e.g. bfloat16); parameters and BN statistics stay
      float32 and the outputs are cast to float32.
    stem_size: image side that selects the stem, like the authors' fixed
      `input_shape` while their Keras input stayed (None, None, 3). None takes
      it from the input, so a 48-px input raises; set it to run a trained
      network on inputs of another size.
  """
  stage_sizes: Sequence[int] = STAGE_SIZES['resnet18']
  width: float = 1.0
  stem_width: int = 64
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  stem_size: int | None = None

  def __post_init__(self):
    if not self.width > 0:
      raise ValueError(f'ResNet width must be > 0, got {self.width}.')
    if int(_STAGE_WIDTHS[0] * self.width) < 1:
      raise ValueError(f'ResNet width {self.width} gives a first stage with '
                       'int(64 * width) = 0 channels; use width >= 1/64.')
    if self.stem_width < 1:
      raise ValueError(f'stem_width must be >= 1, got {self.stem_width}.')
    if len(self.stage_sizes) != 4 or min(self.stage_sizes) < 1:
      raise ValueError('stage_sizes must be four positive block counts, got '
                       f'{tuple(self.stage_sizes)}.')
    if self.stem_size is not None:
      _check_size(self.stem_size)
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool) -> dict[str, jnp.ndarray]:
    """Maps images [B, H, W, C] to pools [B, int(512w)] and feature_map."""
    size = _check_size(x.shape[1] if self.stem_size is None else self.stem_size)
    x = x.astype(self.dtype)
    cifar_stem = size in CIFAR_STEM_SIZES
    x = conv(self.stem_width, 3 if cifar_stem else 7, 1 if cifar_stem else 2,
             self.dtype, name='stem_conv')(x)
    x = batch_norm(train, self.bn_axis_name, self.dtype, name='stem_bn')(x)
    x = nn.relu(x)
    if not cifar_stem:
      # Keras pads with zeros, flax with -inf; identical after the ReLU (x>=0).
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, (blocks, base, stride) in enumerate(
        zip(self.stage_sizes, _STAGE_WIDTHS, _STAGE_STRIDES)):
      for block in range(blocks):
        x = BasicBlock(int(base * self.width), stride if block == 0 else 1,
                       self.bn_axis_name, self.dtype,
                       name=f'stage{stage + 1}_block{block + 1}')(x, train)
    feature_map = x.astype(jnp.float32)
    return {'pools': feature_map.mean(axis=(1, 2)), 'feature_map': feature_map}


def _check_size(size: int) -> int:
  if size not in SUPPORTED_SIZES:
    raise ValueError(f'Unsupported image size {size}: the ResNet stem is '
                     f'defined for sizes {SUPPORTED_SIZES} (3x3 stem for '
                     '32/64, 7x7 stem + max-pool for 128/256); resize the '
                     'images.')
  return size


ResNet10 = functools.partial(ResNet, stage_sizes=STAGE_SIZES['resnet10'])
ResNet18 = functools.partial(ResNet, stage_sizes=STAGE_SIZES['resnet18'])
ResNet34 = functools.partial(ResNet, stage_sizes=STAGE_SIZES['resnet34'])
