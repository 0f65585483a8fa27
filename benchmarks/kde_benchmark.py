r"""KDE scoring speed: JAX vs scikit-learn KernelDensity vs float64 NumPy.

  python benchmarks/kde_benchmark.py            # 10,000 test x 5,000 train x 512-d
  python benchmarks/kde_benchmark.py --smoke    # tiny sizes, a few seconds (CI)

All three score the same L2-normalised random features (absolute values of
Gaussians, so non-negative like ReLU-pooled f) with the same γ
(`kde.bandwidth_gamma`). scikit-learn's KernelDensity(kernel='gaussian',
bandwidth=1/sqrt(2γ)) gives γ·KDE_γ minus a constant; it is checked against the
float64 reference after undoing that affine map. The JAX time is also compared
with a float32 matrix multiply of the same FLOPs (2·m·n·d) timed in the same
run, the cost floor of the matmul expansion. Prints a Markdown table.

JAX and matmul times are the median of --repeats calls after a warm-up call
(compilation is reported separately); scikit-learn and NumPy are timed once.
--sklearn_rows times scikit-learn on the first rows only and extrapolates
linearly to all test rows (its cost is linear in the number of queries); the
table says when it did.
"""
import datetime
import os
import platform
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from scipy import special
from sklearn import neighbors

from oneclass_jax.detectors import kde

_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny sizes (CI): 300 x 200 x 32.")
_NUM_TEST = flags.DEFINE_integer("num_test", 10_000, "Test rows m.")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 5_000, "Train rows n.")
_DIM = flags.DEFINE_integer("dim", 512, "Feature dimension d.")
_SKLEARN_ROWS = flags.DEFINE_integer(
    "sklearn_rows", 0, "Time scikit-learn on this many test rows and "
    "extrapolate linearly (0 = all rows).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats for JAX calls.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random features.")


def _features(rng, rows, dim):
  x = np.abs(rng.normal(size=(rows, dim)))
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _median_seconds(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _numpy_reference(test, train, gamma, block=1000):
  """Float64 −KDE_γ: BLAS matmul expansion + scipy logsumexp, by blocks."""
  train_sq = (train * train).sum(axis=1)
  out = np.empty(test.shape[0])
  for s in range(0, test.shape[0], block):
    q = test[s:s + block]
    sq = np.maximum((q * q).sum(axis=1)[:, None] + train_sq - 2 * q @ train.T,
                    0.0)
    out[s:s + block] = -(special.logsumexp(-gamma * sq, axis=1) -
                         np.log(len(train))) / gamma
  return out


def _cpu_model():
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def run(m, n, d, sklearn_rows, repeats, seed):
  """Times the three implementations; returns the Markdown report."""
  rng = np.random.default_rng(seed)
  train, test = _features(rng, n, d), _features(rng, m, d)
  gamma = kde.bandwidth_gamma(train)

  # JAX: fit is a transfer; time the scoring, compile (first call) apart.
  det = kde.KDE().fit(train)
  start = time.perf_counter()
  jax_scores = det.score(test)
  jax_first = time.perf_counter() - start
  jax_time = _median_seconds(lambda: det.score(test), repeats)

  # The matmul floor: same shapes and precision as the KDE's expansion.
  a = jnp.asarray(test, jnp.float32)
  b = jnp.asarray(train, jnp.float32)
  matmul = jax.jit(lambda x, y: jnp.matmul(
      x, y.T, precision=jax.lax.Precision.HIGHEST))
  matmul(a, b).block_until_ready()
  mm_time = _median_seconds(lambda: matmul(a, b).block_until_ready(), repeats)
  gflops = 2.0 * m * n * d / mm_time / 1e9

  start = time.perf_counter()
  ref = _numpy_reference(test, train, gamma)
  np_time = time.perf_counter() - start

  rows = m if sklearn_rows <= 0 else min(sklearn_rows, m)
  sk = neighbors.KernelDensity(kernel="gaussian",
                               bandwidth=(2 * gamma) ** -0.5).fit(train)
  start = time.perf_counter()
  sk_normality = sk.score_samples(test[:rows])
  sk_time = (time.perf_counter() - start) * m / rows
  # log p_sklearn = γ·KDE_γ − d/2·log(π/γ).
  sk_as_score = -(sk_normality + d / 2 * np.log(np.pi / gamma)) / gamma

  jax_err = float(np.abs(jax_scores - ref).max())
  sk_err = float(np.abs(sk_as_score - ref[:rows]).max())
  sk_note = ("all rows" if rows == m else
             f"timed on {rows} rows, ×{m / rows:g} (linear extrapolation)")
  speedup = sk_time / jax_time
  ratio = jax_time / mm_time
  device = jax.devices()[0]
  lines = [
      f"KDE scoring, {m:,} test × {n:,} train × {d}-d, γ = {gamma:.3f}.",
      "",
      "| implementation | seconds | relative to JAX KDE | notes |",
      "|---|---|---|---|",
      f"| JAX KDE (`KDE.score`, float32, jit) | {jax_time:.4g} | 1× | median "
      f"of {repeats}; first call incl. compile {jax_first:.2f} s |",
      f"| scikit-learn `KernelDensity.score_samples` | {sk_time:.4g} | "
      f"{speedup:.0f}× slower | {sk_note} |",
      f"| NumPy float64 (BLAS matmul + logsumexp) | {np_time:.4g} | "
      f"{np_time / jax_time:.1f}× slower | reference for the errors below |",
      f"| JAX float32 matmul alone, 2·m·n·d FLOPs | {mm_time:.4g} | "
      f"{mm_time / jax_time:.2f}× | {gflops:.1f} GFLOP/s |",
      "",
      f"- JAX vs scikit-learn: **{speedup:.0f}×** faster (target ≥ 50×: "
      f"{'met' if speedup >= 50 else 'NOT met'}).",
      f"- JAX KDE time / same-FLOP matmul time: **{ratio:.2f}** (target ≤ 2: "
      f"{'met' if ratio <= 2 else 'NOT met'}).",
      f"- Max |JAX − float64| = {jax_err:.1e}; max |scikit-learn (affine "
      f"map undone) − float64| = {sk_err:.1e} (score units).",
      f"- JAX device: {device.platform} ({device.device_kind}), jax "
      f"{jax.__version__}; CPU: {_cpu_model()}, nproc = {os.cpu_count()}.",
  ]
  return "\n".join(lines)


def main(argv):
  del argv
  if _SMOKE.value:
    sizes = dict(m=300, n=200, d=32, sklearn_rows=100, repeats=2)
  else:
    sizes = dict(m=_NUM_TEST.value, n=_NUM_TRAIN.value, d=_DIM.value,
                 sklearn_rows=_SKLEARN_ROWS.value, repeats=_REPEATS.value)
  print(run(seed=_SEED.value, **sizes))
  print(f"\n({datetime.date.today().isoformat()})")


if __name__ == "__main__":
  app.run(main)
