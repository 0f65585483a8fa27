"""Models: the ResNet backbone f, the projection head g, classifier, decoder.

`OneClassModel` composes them the way every method uses them: one forward pass
yields the representation f (`pools`), the head output g(f) (`embeds`), and,
when configured, rotation logits q(g(f)) and a reconstruction from f.
"""
from collections.abc import Mapping
import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from oneclass_jax.models import decoder as decoder_lib
from oneclass_jax.models import heads
from oneclass_jax.models import resnet

MODELS = {
    'resnet10': resnet.ResNet10,
    'resnet18': resnet.ResNet18,
    'resnet34': resnet.ResNet34,
}
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16,
          'float16': jnp.float16}


class OneClassModel(nn.Module):
  """Backbone f + head g (+ rotation classifier q) (+ decoder from f).

  The defaults are the authors' contrastive model (ResNet-18, head 512x8,128).
  Their rotation model is head_depth=7, head_out_dim=512, head_out_bias=True,
  num_classes=4. `head_depth=0, head_out_dim=None` is the identity head.

  Only the backbone runs in `dtype`; the head, classifier and decoder are
  small and run in float32, so losses see float32 outputs.

  Attributes:
    backbone: a key of MODELS.
    width: backbone channel multiplier.
    stem_width: backbone stem channels (64 in the authors' code).
    head_depth, head_width, head_out_dim, head_out_bias: see heads.MLPHead.
    num_classes: size of the classifier on g(f); 0 means no classifier.
    decoder: whether to add the denoising-autoencoder decoder on f.
    decoder_width: channels of the decoder's last stage.
    image_size: training image side; it selects the backbone stem (so other
      input sizes run through the same network) and the decoder output size.
    bn_axis_name: mapped axis for cross-replica BatchNorm, or None.
    dtype: backbone compute dtype.
  """
  backbone: str = 'resnet18'
  width: float = 1.0
  stem_width: int = 64
  head_depth: int = 8
  head_width: int = 512
  head_out_dim: int | None = 128
  head_out_bias: bool = False
  num_classes: int = 0
  decoder: bool = False
  decoder_width: int = 64
  image_size: int = 32
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

  def __post_init__(self):
    if self.backbone.lower() not in MODELS:
      raise ValueError(f'Unknown backbone {self.backbone!r}; choose one of '
                       f'{sorted(MODELS)}.')
    if self.num_classes < 0:
      raise ValueError(f'num_classes must be >= 0 (0 = no classifier), got '
                       f'{self.num_classes}.')
    # Detached (parent=None) instances run the submodules' own checks now,
    # at construction, rather than at the first init/apply.
    self._backbone(parent=None)
    self._head(parent=None)
    if self.decoder:
      self._decoder(channels=3, parent=None)
    super().__post_init__()

  def _backbone(self, **kwargs) -> resnet.ResNet:
    return MODELS[self.backbone.lower()](
        width=self.width, stem_width=self.stem_width,
        bn_axis_name=self.bn_axis_name, dtype=self.dtype,
        stem_size=self.image_size, **kwargs)

  def _head(self, **kwargs) -> heads.MLPHead:
    return heads.MLPHead(self.head_depth, self.head_width, self.head_out_dim,
                         self.head_out_bias, self.bn_axis_name, **kwargs)

  def _decoder(self, channels: int, **kwargs) -> decoder_lib.Decoder:
    return decoder_lib.Decoder(self.image_size, channels, self.decoder_width,
                               self.bn_axis_name, **kwargs)

  @nn.compact
  def __call__(self, x, train: bool) -> dict[str, jnp.ndarray]:
    """Images [B, H, W, C] -> pools, embeds, feature_map[, logits, recon]."""
    out = self._backbone(name='backbone')(x, train)
    pools = out['pools']
    embeds = self._head(name='head')(pools, train)
    result = {'pools': pools, 'embeds': embeds,
              'feature_map': out['feature_map']}
    if self.num_classes:
      result['logits'] = heads.Classifier(self.num_classes,
                                          name='classifier')(embeds)
    if self.decoder:
      result['recon'] = self._decoder(x.shape[-1], name='decoder')(pools, train)
    return result


_FIELDS = tuple(f.name for f in dataclasses.fields(OneClassModel)
                if f.name not in ('parent', 'name'))


def build_model(model_cfg: Mapping[str, Any] | Any) -> OneClassModel:
  """Builds OneClassModel from a ConfigDict (or dict) with its field names.

  Missing fields take the defaults; `dtype` may be a name ('bfloat16').

  Raises:
    ValueError: for an unknown field name or an invalid value.
  """
  kwargs = dict(model_cfg.items())
  unknown = sorted(set(kwargs) - set(_FIELDS))
  if unknown:
    raise ValueError(f'Unknown model config field(s) {unknown}; valid fields '
                     f'are {list(_FIELDS)}.')
  if isinstance(kwargs.get('dtype'), str):
    if kwargs['dtype'] not in DTYPES:
      raise ValueError(f'Unknown model dtype {kwargs["dtype"]!r}; choose one '
                       f'of {sorted(DTYPES)}.')
    kwargs['dtype'] = DTYPES[kwargs['dtype']]
  return OneClassModel(**kwargs)
