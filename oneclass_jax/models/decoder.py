"""Image decoder for the denoising-autoencoder baseline.

The paper compares against a denoising autoencoder but does not describe its
decoder, and the authors' code has none; the architecture here is our choice.
It decodes the pooled representation f, so f itself is the bottleneck and the
detectors see the same kind of vector as for the self-supervised methods.
"""
import flax.linen as nn
import jax.numpy as jnp

from oneclass_jax.models import heads
from oneclass_jax.models import resnet

_UPSAMPLINGS = 3


class Decoder(nn.Module):
  """Decodes a vector f [B, D] to an image [B, S, S, channels] in [0, 1].

  Dense -> (S/8 x S/8 x 4*width) -> BN -> ReLU, then three stages of
  nearest-neighbour 2x upsampling -> 3x3 conv -> BN -> ReLU with 4*width,
  2*width and width channels, then a 3x3 conv to `channels` and a sigmoid.
  Upsampling by resize + conv (rather than a strided transposed conv) avoids
  checkerboard artefacts. Convs use the backbone's padding and init.
  The Dense layer has (S/8)^2 * 4 * width * D weights, which grows quickly
  with S; the denoising baseline is meant for 32 and 64 px images.

  Attributes:
    image_size: side S of the output image, a positive multiple of 8.
    channels: channels of the output image.
    width: channels of the last upsampling stage.
    bn_axis_name: mapped axis for cross-replica BatchNorm, or None.
  """
  image_size: int = 32
  channels: int = 3
  width: int = 64
  bn_axis_name: str | None = None

  def __post_init__(self):
    step = 2 ** _UPSAMPLINGS
    if self.image_size <= 0 or self.image_size % step:
      raise ValueError(f'Decoder image_size must be a positive multiple of '
                       f'{step}, got {self.image_size}.')
    if self.channels <= 0 or self.width <= 0:
      raise ValueError(f'Decoder channels and width must be > 0, got '
                       f'{self.channels} and {self.width}.')
    super().__post_init__()

  @nn.compact
  def __call__(self, f, train: bool):
    side = self.image_size // 2 ** _UPSAMPLINGS
    stage_channels = [self.width * 2 ** (_UPSAMPLINGS - 1 - i)
                      for i in range(_UPSAMPLINGS)]
    x = nn.Dense(side * side * stage_channels[0], use_bias=False,
                 kernel_init=heads.dense_init, name='dense')(f)
    x = x.reshape(f.shape[0], side, side, stage_channels[0])
    x = nn.relu(resnet.batch_norm(train, self.bn_axis_name, name='dense_bn')(x))
    for i, features in enumerate(stage_channels):
      x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
      x = resnet.conv(features, 3, name=f'up{i + 1}_conv')(x)
      x = resnet.batch_norm(train, self.bn_axis_name, name=f'up{i + 1}_bn')(x)
      x = nn.relu(x)
    x = nn.Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)),
                kernel_init=resnet.conv_init, name='out_conv')(x)
    return nn.sigmoid(x)
