"""Cosine schedule and coupled weight decay against their formulas."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from oneclass_jax import optim


def _cfg(**kw):
  base = dict(name="sgd", learning_rate=0.01, momentum=0.9, nesterov=False,
              weight_decay=3e-4, decay_batchnorm=True, schedule="cosine",
              schedule_granularity="epoch", min_learning_rate_ratio=0.0)
  base.update(kw)
  return ml_collections.ConfigDict(base)


@pytest.mark.parametrize("granularity", ["epoch", "step"])
def test_cosine_schedule(granularity):
  spe, total = 7, 70
  schedule = optim.learning_rate_schedule(
      _cfg(schedule_granularity=granularity), spe, total)
  for step in [0, 1, 6, 7, 13, 35, 69]:
    s = spe * (step // spe) if granularity == "epoch" else step
    expected = 0.01 * 0.5 * (1 + math.cos(math.pi * s / total))
    np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5,
                               atol=1e-9)  # float32 near the end of the cycle.
  # Constant within an epoch only for the authors' per-epoch form.
  same = float(schedule(7)) == float(schedule(13))
  assert same == (granularity == "epoch")


def test_sgd_with_coupled_l2_matches_formula():
  """v <- g + wd*w + m*v ; w <- w - lr*v (optax's trace form)."""
  rng = np.random.default_rng(0)
  params = {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 2)))},
            "BatchNorm_0": {"scale": jnp.asarray(rng.normal(size=(2,)))}}
  grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape)),
                        params) for _ in range(3)]
  cfg = _cfg(schedule="constant", learning_rate=0.1, weight_decay=0.01)
  tx, _ = optim.make_optimizer(cfg, 10, 100)
  state = tx.init(params)
  p_ref = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  v_ref = jax.tree.map(np.zeros_like, p_ref)
  p = params
  for g in grads:
    updates, state = tx.update(g, state, p)
    p = jax.tree.map(jnp.add, p, updates)
    v_ref = jax.tree.map(lambda v, gg, w: 0.9 * v + np.asarray(gg) + 0.01 * w,
                         v_ref, g, p_ref)
    p_ref = jax.tree.map(lambda w, v: w - 0.1 * v, p_ref, v_ref)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5),
               p, p_ref)


def test_batchnorm_can_be_excluded_from_decay():
  params = {"Dense_0": {"kernel": jnp.ones((2,))},
            "BatchNorm_0": {"scale": jnp.ones((2,))}}
  zero = jax.tree.map(jnp.zeros_like, params)
  tx, _ = optim.make_optimizer(
      _cfg(schedule="constant", learning_rate=1.0, momentum=0.0,
           weight_decay=0.5, decay_batchnorm=False), 1, 1)
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(updates["Dense_0"]["kernel"], -0.5)
  np.testing.assert_allclose(updates["BatchNorm_0"]["scale"], 0.0)


def test_unknown_schedule_and_optimizer():
  with pytest.raises(ValueError, match="Unknown schedule"):
    optim.make_optimizer(_cfg(schedule="linear"), 1, 1)
  with pytest.raises(ValueError, match="Unknown optimizer"):
    optim.make_optimizer(_cfg(name="adam"), 1, 1)


def test_decay_mask_finds_every_batchnorm_of_the_model():
  from oneclass_jax import models  # pylint: disable=g-import-not-at-top
  model = models.build_model(dict(
      backbone="resnet10", width=0.125, stem_width=8, head_depth=2,
      head_width=16, head_out_dim=8, image_size=32, num_classes=4))
  params = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((2, 32, 32, 3)), train=False))["params"]
  mask = optim._decay_mask(params, decay_bn=False)
  for path, decayed in jax.tree_util.tree_leaves_with_path(mask):
    name = jax.tree_util.keystr(path)
    # BN scales are the only 'scale' leaves; BN biases sit beside them.
    is_bn = "bn" in name and (name.endswith("['scale']") or
                              name.endswith("['bias']"))
    assert decayed != is_bn, name
