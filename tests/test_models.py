"""Tests for oneclass_jax.models against float64 numpy references.

Models are tiny (width 1/16, stem 8) except the parameter counts, which use
jax.eval_shape and so never compile the full-size network.
"""
import functools

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from oneclass_jax import models
from oneclass_jax.models import decoder as decoder_lib
from oneclass_jax.models import heads
from oneclass_jax.models import resnet

EPS = 1e-5
TINY = dict(width=1 / 16, stem_width=8)
# jax.nn.initializers' truncation constant: std of a unit normal cut at +-2.
TRUNC_STD = 0.87962566103423978


def _np_conv(x, w, stride, pad):
  """float64 NHWC conv with explicit zero padding ((top, bottom), (l, r))."""
  x = np.pad(x, ((0, 0), pad[0], pad[1], (0, 0)))
  k = w.shape[0]
  oh = (x.shape[1] - k) // stride + 1
  ow = (x.shape[2] - k) // stride + 1
  out = np.zeros((x.shape[0], oh, ow, w.shape[-1]))
  for i in range(k):
    for j in range(k):
      patch = x[:, i:i + stride * (oh - 1) + 1:stride,
                j:j + stride * (ow - 1) + 1:stride]
      out += np.einsum('bhwc,co->bhwo', patch, w[i, j])
  return out


def _np_bn(x, mean, var, p):
  return (x - mean) / np.sqrt(var + EPS) * p['scale'] + p['bias']


def _batch_moments(x):
  axes = tuple(range(x.ndim - 1))
  return x.mean(axes), x.var(axes)  # biased (1/n) variance, as flax uses.


def _randomize(tree, rng, positive=False):
  """Replaces every leaf by random float32 values (positive for variances)."""
  def draw(leaf):
    v = rng.normal(size=leaf.shape)
    return jnp.asarray(np.abs(v) + 0.5 if positive else 0.5 * v, jnp.float32)
  return jax.tree.map(draw, tree)


def _f64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _assert_trees_close(got, want, **tol):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  jax.tree.map(functools.partial(np.testing.assert_allclose, **tol), got, want)


def _numpy_variables(model, x, seed=0):
  """He-scaled random variables for `model`, skipping the slow jitted init."""
  shapes = jax.eval_shape(functools.partial(model.init, jax.random.key(0), x,
                                            train=False))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      value = rng.normal(size=leaf.shape) * np.sqrt(
          2 / np.prod(leaf.shape[:-1]))
    else:
      value = np.full(leaf.shape, float(name in ('scale', 'var')))
    return jnp.asarray(value, jnp.float32)
  return jax.tree_util.tree_map_with_path(draw, shapes)


def _param_count(model, size=32):
  variables = jax.eval_shape(functools.partial(
      model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)),
      train=False))
  return sum(int(np.prod(p.shape))
             for p in jax.tree.leaves(variables['params']))


# ------------------------------------------------------------------ shapes --


@pytest.mark.parametrize('size, side', [(32, 4), (64, 8), (128, 4), (256, 8)])
def test_resnet_output_shapes(size, side):
  model = resnet.ResNet18(**TINY)
  x = jnp.zeros((2, size, size, 3))
  variables = jax.eval_shape(functools.partial(model.init, jax.random.key(0),
                                               x, train=False))
  out = jax.eval_shape(functools.partial(model.apply, train=False),
                       variables, x)
  assert out['pools'].shape == (2, 32)
  assert out['feature_map'].shape == (2, side, side, 32)
  assert out['pools'].dtype == jnp.float32


def test_unsupported_size_raises():
  model = resnet.ResNet18(**TINY)
  with pytest.raises(ValueError, match=r'48.*\(32, 64, 128, 256\)'):
    model.init(jax.random.key(0), jnp.zeros((1, 48, 48, 3)), train=False)


def test_stem_size_runs_other_input_sizes():
  # Like the authors' Keras input (None, None, 3): the stem is fixed, the
  # input side is free.
  model = resnet.ResNet18(stem_size=32, **TINY)
  x = jnp.zeros((1, 48, 48, 3))
  variables = jax.eval_shape(functools.partial(model.init, jax.random.key(0),
                                               x, train=False))
  out = jax.eval_shape(functools.partial(model.apply, train=False),
                       variables, x)
  assert out['feature_map'].shape == (1, 6, 6, 32)


@pytest.mark.parametrize('make', [
    lambda: resnet.ResNet(width=0.0),
    lambda: resnet.ResNet(width=0.01),
    lambda: resnet.ResNet(stem_width=0),
    lambda: resnet.ResNet(stage_sizes=(2, 2, 2)),
    lambda: resnet.ResNet(stem_size=100),
    lambda: resnet.get_stage_sizes('resnet50'),
    lambda: heads.MLPHead(depth=-1),
    lambda: heads.MLPHead(depth=2, width=0),
    lambda: heads.MLPHead(depth=2, out_dim=None),
    lambda: heads.MLPHead(depth=0, out_dim=0),
    lambda: heads.Classifier(0),
    lambda: decoder_lib.Decoder(image_size=36),
    lambda: models.OneClassModel(num_classes=-1),
    lambda: models.OneClassModel(image_size=28),
])
def test_invalid_arguments_raise(make):
  with pytest.raises(ValueError):
    make()


def test_unknown_depth_lists_choices():
  with pytest.raises(ValueError, match="resnet10.*resnet18.*resnet34"):
    resnet.get_stage_sizes('ResNet50')
  assert resnet.get_stage_sizes('ResNet18') == (2, 2, 2, 2)


# ------------------------------------------------------- parameter counts --


def test_parameter_counts_match_the_authors_keras_models():
  assert _param_count(resnet.ResNet18()) == 11_168_832
  rotation = models.OneClassModel(head_depth=7, head_out_dim=512,
                                  head_out_bias=True, num_classes=4)
  assert _param_count(rotation) == 13_275_716
  assert _param_count(models.OneClassModel()) == 13_339_712


# ------------------------------------------------ symmetric padding, block --


def test_stride2_conv_pads_symmetrically_not_same():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 8, 8, 3))
  conv = resnet.conv(5, 3, stride=2)
  params = conv.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  w = np.asarray(params['params']['kernel'], np.float64)
  assert set(params['params']) == {'kernel'}  # no bias
  got = np.asarray(conv.apply(params, jnp.asarray(x, jnp.float32)))
  symmetric = _np_conv(x, w, 2, ((1, 1), (1, 1)))
  np.testing.assert_allclose(got, symmetric, atol=1e-5)
  # 'SAME' pads (0, 1) for stride 2 on an even side: a different result.
  same = np.asarray(jax.lax.conv_general_dilated(
      jnp.asarray(x), jnp.asarray(w), (2, 2), 'SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
  np.testing.assert_allclose(same, _np_conv(x, w, 2, ((0, 1), (0, 1))),
                             atol=1e-5)
  assert np.abs(same - got).max() > 0.1


def _np_block(x, p, stats, stride, train):
  """float64 reference of BasicBlock with a projection shortcut."""
  new_stats = {}

  def bn(h, name):
    if train:
      mean, var = _batch_moments(h)
      old = stats[name]
      new_stats[name] = {'mean': 0.9 * old['mean'] + 0.1 * mean,
                         'var': 0.9 * old['var'] + 0.1 * var}
    else:
      mean, var = stats[name]['mean'], stats[name]['var']
    return _np_bn(h, mean, var, p[name])

  y = _np_conv(x, p['conv1']['kernel'], stride, ((1, 1), (1, 1)))
  y = np.maximum(bn(y, 'bn1'), 0)
  y = bn(_np_conv(y, p['conv2']['kernel'], 1, ((1, 1), (1, 1))), 'bn2')
  s = bn(_np_conv(x, p['shortcut_conv']['kernel'], stride, ((0, 0), (0, 0))),
         'shortcut_bn')
  return np.maximum(y + s, 0), new_stats


@pytest.mark.parametrize('train', [True, False])
def test_basic_block_matches_numpy(train):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(3, 8, 8, 4))
  block = resnet.BasicBlock(features=6, stride=2)
  variables = block.init(jax.random.key(0), jnp.zeros((1, 8, 8, 4)),
                         train=False)
  params = _randomize(variables['params'], rng)
  stats = {name: {'mean': _randomize(s['mean'], rng),
                  'var': _randomize(s['var'], rng, positive=True)}
           for name, s in variables['batch_stats'].items()}
  got, updates = block.apply({'params': params, 'batch_stats': stats},
                             jnp.asarray(x, jnp.float32), train=train,
                             mutable=['batch_stats'])
  want, want_stats = _np_block(x, _f64(params), _f64(stats), 2, train)
  np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)
  if train:
    _assert_trees_close(_f64(updates['batch_stats']), want_stats, atol=1e-5,
                        rtol=1e-5)
  else:  # eval mode leaves the running statistics alone.
    assert jax.tree.all(jax.tree.map(np.array_equal, updates['batch_stats'],
                                     stats))


def test_identity_shortcut_when_shape_is_kept():
  block = resnet.BasicBlock(features=4, stride=1)
  variables = jax.eval_shape(functools.partial(
      block.init, jax.random.key(0), jnp.zeros((1, 8, 8, 4)), train=False))
  assert set(variables['params']) == {'conv1', 'bn1', 'conv2', 'bn2'}


# -------------------------------------------------------------- BatchNorm --


def test_batchnorm_momentum_and_eval_mode_in_head():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(10, 5)) * 2 + 1
  head = heads.MLPHead(depth=1, width=6, out_dim=3)
  variables = head.init(jax.random.key(0), jnp.zeros((1, 5)), train=False)
  params = _randomize(variables['params'], rng)
  old = {'mean': rng.normal(size=6), 'var': rng.uniform(0.5, 2.0, size=6)}
  stats = {'proj_bn_0': jax.tree.map(lambda a: jnp.asarray(a, jnp.float32),
                                     old)}
  p = _f64(params)
  h = x @ p['proj_0']['kernel']
  mean, var = h.mean(0), h.var(0)  # biased estimator (ddof=0)
  assert np.abs(var * 10 / 9 - var).max() > 1e-2  # ddof matters here

  out, new = head.apply({'params': params, 'batch_stats': stats},
                        jnp.asarray(x, jnp.float32), train=True,
                        mutable=['batch_stats'])
  want = np.maximum(_np_bn(h, mean, var, p['proj_bn_0']), 0)
  want = want @ p['embeds']['kernel']
  np.testing.assert_allclose(out, want, atol=1e-4, rtol=1e-4)
  new = _f64(new['batch_stats']['proj_bn_0'])
  np.testing.assert_allclose(new['mean'], 0.9 * old['mean'] + 0.1 * mean,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new['var'], 0.9 * old['var'] + 0.1 * var,
                             rtol=1e-5, atol=1e-6)

  out = head.apply({'params': params, 'batch_stats': stats},
                   jnp.asarray(x, jnp.float32), train=False)
  want = np.maximum(_np_bn(h, old['mean'], old['var'], p['proj_bn_0']), 0)
  np.testing.assert_allclose(out, want @ p['embeds']['kernel'], atol=1e-4,
                             rtol=1e-4)


def test_cross_replica_vs_per_device_batchnorm_in_shard_map():
  mesh = jax.make_mesh((8,), ('data',),
                       axis_types=(jax.sharding.AxisType.Explicit,))
  x = jax.random.normal(jax.random.key(3), (16, 32, 32, 3))
  kwargs = dict(width=1 / 16, stem_width=4)
  synced = resnet.ResNet10(bn_axis_name='data', **kwargs)
  local = resnet.ResNet10(bn_axis_name=None, **kwargs)

  def train_apply(model, v, xs):
    out, new = model.apply(v, xs, train=True, mutable=['batch_stats'])
    return out['pools'], new['batch_stats']

  @jax.jit
  def unsharded(v, xs):
    # vmap keeps BN statistics per chunk: the per-device reference.
    chunks = jax.vmap(lambda c: train_apply(local, v, c)[0])(
        xs.reshape(8, 2, *xs.shape[1:]))
    return train_apply(local, v, xs), chunks.reshape(16, -1)

  @jax.jit
  def sharded(v, xs):
    specs = dict(mesh=mesh, in_specs=(P(), P('data')))
    cross = jax.shard_map(functools.partial(train_apply, synced),
                          out_specs=(P('data'), P()), **specs)(v, xs)
    per_device = jax.shard_map(lambda v, c: train_apply(local, v, c)[0],
                               out_specs=P('data'), **specs)(v, xs)
    return cross, per_device

  variables = _numpy_variables(local, x[:1])
  (full_pools, full_stats), chunk_pools = unsharded(variables, x)
  # An Explicit mesh wants the inputs already laid out as in_specs says.
  (pools, stats), per_device_pools = sharded(
      jax.device_put(variables, jax.NamedSharding(mesh, P())),
      jax.device_put(x, jax.NamedSharding(mesh, P('data'))))
  np.testing.assert_allclose(pools, full_pools, atol=1e-4, rtol=1e-4)
  _assert_trees_close(stats, full_stats, atol=1e-5, rtol=1e-4)
  np.testing.assert_allclose(per_device_pools, chunk_pools, atol=1e-4,
                             rtol=1e-4)
  # The two BN modes must really differ, or the checks above prove nothing.
  assert np.abs(chunk_pools - full_pools).max() > 1e-2


# --------------------------------------------------------- initialisation --


def test_conv_init_is_truncated_he_fan_out():
  # The block's convs come from the same `resnet.conv` factory as the stem's.
  block = resnet.BasicBlock(features=64, stride=2)
  variables = block.init(jax.random.key(0), jnp.zeros((1, 8, 8, 32)),
                         train=False)
  kernel = np.asarray(variables['params']['conv1']['kernel'])
  assert kernel.shape == (3, 3, 32, 64)
  fan_out, fan_in = 3 * 3 * 64, 3 * 3 * 32
  # variance_scaling draws N(0,1) cut at +-2, scaled by sqrt(2/fan)/TRUNC_STD,
  # so the samples' std is sqrt(2/fan_out) itself.
  np.testing.assert_allclose(kernel.std(), np.sqrt(2 / fan_out), rtol=0.05)
  assert abs(kernel.std() - np.sqrt(2 / fan_in)) > 0.2 * np.sqrt(2 / fan_in)
  assert abs(kernel.mean()) < 0.05 * np.sqrt(2 / fan_out)
  bound = 2 * np.sqrt(2 / fan_out) / TRUNC_STD
  assert np.abs(kernel).max() <= bound * (1 + 1e-6)
  assert np.abs(kernel).max() > 0.95 * bound
  for name in ('bn1', 'bn2', 'shortcut_bn'):
    np.testing.assert_array_equal(variables['params'][name]['scale'], 1.0)
    np.testing.assert_array_equal(variables['params'][name]['bias'], 0.0)
  # Across the whole backbone, only BN layers have anything but a kernel.
  shapes = jax.eval_shape(functools.partial(
      resnet.ResNet18(**TINY).init, jax.random.key(0),
      jnp.zeros((1, 128, 128, 3)), train=False))
  for path in flax.traverse_util.flatten_dict(shapes['params']):
    want = ('bias', 'scale') if 'bn' in path[-2] else ('kernel',)
    assert path[-1] in want, path


def test_dense_init_is_glorot_uniform_with_zero_bias():
  head = heads.MLPHead(depth=1, width=256, out_dim=128, out_bias=True)
  params = head.init(jax.random.key(0), jnp.zeros((1, 64)),
                     train=False)['params']
  for name, (fan_in, fan_out) in {'proj_0': (64, 256),
                                  'embeds': (256, 128)}.items():
    kernel = np.asarray(params[name]['kernel'])
    bound = np.sqrt(6 / (fan_in + fan_out))
    assert np.abs(kernel).max() <= bound
    assert np.abs(kernel).max() > 0.99 * bound
    np.testing.assert_allclose(kernel.std(), bound / np.sqrt(3), rtol=0.03)
  assert 'bias' not in params['proj_0']
  np.testing.assert_array_equal(params['embeds']['bias'], 0.0)
  clf = heads.Classifier(4).init(jax.random.key(1), jnp.zeros((1, 512)))
  np.testing.assert_array_equal(clf['params']['logits']['bias'], 0.0)
  assert np.abs(clf['params']['logits']['kernel']).max() <= np.sqrt(6 / 516)


# ------------------------------------------------------- heads and decoder --


def test_identity_head_and_single_linear_head():
  x = jax.random.normal(jax.random.key(4), (3, 7))
  identity = heads.MLPHead(depth=0, out_dim=None)
  variables = identity.init(jax.random.key(0), x, train=True)
  assert not jax.tree.leaves(variables)
  np.testing.assert_array_equal(identity.apply(variables, x, train=True), x)

  linear = heads.MLPHead(depth=0, out_dim=5, out_bias=True)
  variables = linear.init(jax.random.key(0), x, train=True)
  p = _randomize(variables['params'], np.random.default_rng(5))
  q = _f64(p)['embeds']
  want = np.asarray(x, np.float64) @ q['kernel'] + q['bias']
  np.testing.assert_allclose(linear.apply({'params': p}, x, train=True), want,
                             atol=1e-5)


@pytest.mark.parametrize('size, channels', [(32, 3), (64, 1)])
def test_decoder_shape_and_range(size, channels):
  dec = decoder_lib.Decoder(image_size=size, channels=channels, width=4)
  f = jax.random.normal(jax.random.key(6), (2, 16)) * 10
  apply = jax.jit(functools.partial(dec.apply, train=True,
                                    mutable=['batch_stats']))
  out, _ = apply(_numpy_variables(dec, f), f)
  assert out.shape == (2, size, size, channels)
  assert out.min() >= 0 and out.max() <= 1
  assert np.abs(out[0] - out[1]).max() > 1e-3  # depends on f


# ---------------------------------------------------------- OneClassModel --


def test_one_class_model_outputs():
  cfg = ml_collections.ConfigDict(dict(
      backbone='resnet10', stem_width=8, width=1 / 16, head_depth=2,
      head_width=16, head_out_dim=16, head_out_bias=True, num_classes=4,
      decoder=True, decoder_width=4, image_size=32, dtype='float32'))
  model = models.build_model(cfg)
  x = jnp.zeros((2, 32, 32, 3))
  variables = jax.eval_shape(functools.partial(model.init, jax.random.key(0),
                                               x, train=False))
  assert set(variables['params']) == {'backbone', 'head', 'classifier',
                                      'decoder'}
  out = jax.eval_shape(functools.partial(model.apply, train=False),
                       variables, x)
  assert {k: v.shape for k, v in out.items()} == {
      'pools': (2, 32), 'embeds': (2, 16), 'logits': (2, 4),
      'recon': (2, 32, 32, 3), 'feature_map': (2, 4, 4, 32)}

  plain = models.build_model({'backbone': 'resnet10', 'head_depth': 0,
                              'head_out_dim': None, **TINY})
  out = jax.eval_shape(functools.partial(plain.apply, train=False),
                       jax.eval_shape(functools.partial(
                           plain.init, jax.random.key(0), x, train=False)), x)
  assert set(out) == {'pools', 'embeds', 'feature_map'}
  assert out['embeds'].shape == out['pools'].shape


def test_build_model_rejects_unknown_and_invalid_fields():
  with pytest.raises(ValueError, match='head_dims'):
    models.build_model({'head_dims': '512x8'})
  with pytest.raises(ValueError, match='float8'):
    models.build_model({'dtype': 'float8'})
  with pytest.raises(ValueError, match='resnet50'):
    models.build_model({'backbone': 'resnet50'})
  assert models.build_model({'dtype': 'bfloat16'}).dtype == jnp.bfloat16


def test_forward_pass_and_bfloat16_compute():
  x = jax.random.uniform(jax.random.key(7), (4, 32, 32, 3))
  f32 = models.OneClassModel(backbone='resnet10', head_depth=1, head_width=16,
                             head_out_dim=8, **TINY)
  bf16 = f32.clone(dtype=jnp.bfloat16)

  @jax.jit
  def run(variables):
    return (f32.apply(variables, x, train=True, mutable=['batch_stats'])[0],
            bf16.apply(variables, x, train=True, mutable=['batch_stats']))

  want, (got, stats) = run(_numpy_variables(f32, x))
  assert {v.dtype for v in jax.tree.leaves(jax.eval_shape(functools.partial(
      bf16.init, jax.random.key(0), x, train=False)))} == {
          jnp.dtype('float32')}
  assert {v.dtype for v in jax.tree.leaves(stats)} == {jnp.dtype('float32')}
  fmap = np.asarray(want['feature_map'], np.float64)
  assert fmap.min() >= 0  # post-ReLU
  np.testing.assert_allclose(want['pools'], fmap.mean(axis=(1, 2)), rtol=1e-5)
  assert got['pools'].dtype == got['embeds'].dtype == jnp.float32
  np.testing.assert_allclose(got['pools'], want['pools'], atol=0.1, rtol=0.1)
  assert np.abs(got['pools'] - want['pools']).max() > 0  # really bf16
