r"""Stage-2 time and memory per detector against n and d (issue #19).

  python benchmarks/stage2_benchmark.py --out=/tmp/stage2.jsonl
  python benchmarks/stage2_benchmark.py --out=/tmp/stage2.jsonl \
      --libsvm=2000x12288,5000x12288,10000x12288
  python benchmarks/stage2_benchmark.py --smoke --out=/tmp/s.jsonl

Grid mode: every detector in --detectors fits n × d features and scores
--num_test rows, each case in its own process, so its peak resident memory
(ru_maxrss) is its own. --libsvm mode: on the same data, scikit-learn's
OneClassSVM computing its own RBF kernel (libsvm, the code before issue #19)
against `detectors.ocsvm` (a BLAS kernel matrix handed to libsvm as
precomputed): times of both, whether the support sets are equal, and the
largest relative difference of the decision values.

Features are L2-normalised absolute Gaussians (non-negative like ReLU-pooled
f), seeded by --seed. Every finished case is appended to --out (JSON lines
with the load average before and after), and a case already there is skipped,
so a long grid resumes. The Markdown tables replace section "Stage 2 at size"
of --results_md. Time cases on an idle machine.
"""
import datetime
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags
import numpy as np

from results_md import write_section

ROOT = pathlib.Path(__file__).resolve().parents[1]
TITLE = "Stage 2 at size"
GRID = ("1000x512,5000x512,10000x512,50000x512,150000x512,"
        "1000x3072,5000x3072,10000x3072,1000x12288,5000x12288,10000x12288")

FLAGS = flags.FLAGS
flags.DEFINE_string("out", str(ROOT / "benchmarks" / "records" /
                                "stage2.jsonl"),
                    "JSON lines of cases run (a case there is not rerun).")
flags.DEFINE_string("grid", GRID, "n x d cases of the grid.")
flags.DEFINE_string("detectors", "kde,ocsvm,gde,knn", "Detectors timed.")
flags.DEFINE_integer("num_test", 10_000, "Rows scored per case.")
flags.DEFINE_string("libsvm", "", "n x d cases for the libsvm comparison "
                    "(instead of the grid).")
flags.DEFINE_integer("seed", 0, "Seed of the features.")
flags.DEFINE_bool("smoke", False, "Tiny sizes, no RESULTS.md (CI).")
flags.DEFINE_string("results_md", str(ROOT / "benchmarks" / "RESULTS.md"),
                    "RESULTS.md to update ('' = print only).")
flags.DEFINE_string("case", "", "Internal: one grid case 'detector:nxd'.")


def _features(rng, rows, dim):
  x = np.abs(rng.normal(size=(rows, dim)))
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _data(n, d, m, seed):
  rng = np.random.default_rng(seed)
  return _features(rng, n, d), _features(rng, m, d)


def _shape(text):
  n, d = text.lower().split("x")
  return int(n), int(d)


def _peak_gib():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _timed(fn):
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def run_case(name, n, d, m, seed) -> dict:
  """Fits and scores one detector in this process; returns the record."""
  # pylint: disable=import-outside-toplevel
  from oneclass_jax import detectors
  train, test = _data(n, d, m, seed)
  base = _peak_gib()
  det, fit_s = _timed(lambda: detectors.get(name).fit(train))
  scores, score_s = _timed(lambda: det.score(test))
  assert np.isfinite(scores).all()
  return {"kind": "grid", "detector": name, "n": n, "d": d, "m": m,
          "fit_s": fit_s, "score_s": score_s, "peak_gib": _peak_gib(),
          "before_fit_gib": base,
          "fit_rows": (n if det.fit_index_ is None
                       else int(len(det.fit_index_)))}


def _decision(x, support, alpha, gamma, block=1024):
  """Σ α_i exp(−γ‖x − sv_i‖²) of libsvm's solution, float64, by blocks.

  libsvm's own score_samples evaluates the kernel one pair at a time (over an
  hour at 10,000 × 10,000 × 12,288); the code before issue #19 already
  scored through a BLAS matmul like this one, so only the fit is compared.
  """
  sv_sq = np.einsum("ij,ij->i", support, support)
  out = np.empty(len(x))
  for s in range(0, len(x), block):
    q = x[s:s + block]
    d2 = np.einsum("ij,ij->i", q, q)[:, None] + sv_sq - 2 * q @ support.T
    out[s:s + block] = np.exp(-gamma * np.maximum(d2, 0.0)) @ alpha
  return out


def run_libsvm(n, d, m, seed) -> dict:
  """libsvm's own RBF kernel against detectors.ocsvm on the same data."""
  # pylint: disable=import-outside-toplevel
  from sklearn import svm
  from oneclass_jax import detectors
  from oneclass_jax.detectors import kde
  train, test = _data(n, d, m, seed)
  gamma = kde.bandwidth_gamma(train)
  ours, ours_fit = _timed(lambda: detectors.get("ocsvm").fit(train))
  ours_scores, ours_score = _timed(lambda: ours.score(test))
  ref, ref_fit = _timed(lambda: svm.OneClassSVM(
      kernel="rbf", gamma=gamma, nu=0.5).fit(train))
  ref_scores = -_decision(test, ref.support_vectors_, ref.dual_coef_[0],
                          gamma)
  ours_scores = ours_scores * ref.dual_coef_.sum()  # Ours are divided by Σα.
  rel = np.abs(ours_scores - ref_scores) / np.abs(ref_scores)
  return {"kind": "libsvm", "n": n, "d": d, "m": m,
          "libsvm_fit_s": ref_fit, "ours_fit_s": ours_fit,
          "ours_score_s": ours_score,
          "support_equal": bool(np.array_equal(ours.support_, ref.support_)),
          "num_support": int(len(ref.support_)),
          "max_rel_diff": float(rel.max()),
          "decisions_equal": bool(np.array_equal(
              -ours_scores - ours.libsvm_offset_ >= 0,
              -ref_scores - ref.offset_[0] >= 0))}


def _stamp(record: dict, command: list) -> dict:
  record.update(
      date=datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      host=platform.node(), cpus=os.cpu_count(), seed=FLAGS.seed,
      command=" ".join(command))
  return record


def _done(path: pathlib.Path) -> list:
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line]


def _key(r):
  return (r["kind"], r.get("detector", ""), r["n"], r["d"], r["m"], r["seed"])


def _append(path: pathlib.Path, record: dict):
  # One line per finished case, flushed: a killed grid loses one case.
  with path.open("a") as f:
    f.write(json.dumps(record) + "\n")
    f.flush()
    os.fsync(f.fileno())


def _child(name, n, d) -> dict:
  """Runs one grid case in a fresh process (its own peak memory)."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
  proc = subprocess.run(
      [sys.executable, __file__, f"--case={name}:{n}x{d}",
       f"--num_test={FLAGS.num_test}", f"--seed={FLAGS.seed}"],
      capture_output=True, text=True, env=env, check=False)
  if proc.returncode:
    raise RuntimeError(f"case {name} {n}x{d} failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def table(records: list) -> str:
  """The Markdown section from the recorded cases."""
  grid = sorted((r for r in records if r["kind"] == "grid"),
                key=lambda r: (r["detector"], r["d"], r["n"]))
  lib = sorted((r for r in records if r["kind"] == "libsvm"),
               key=lambda r: (r["d"], r["n"]))
  lines = [f"## {TITLE} (issue #19)", ""]
  if records:
    first = records[0]
    lines += [f"Machine: {first['host']}, {first['cpus']} CPUs; dates "
              f"{min(r['date'] for r in records)} to "
              f"{max(r['date'] for r in records)}; seed {first['seed']}. "
              "Random L2-normalised non-negative features. Load: the "
              "1-minute average, the benchmark's own two threads included "
              "(nothing else ran). Records: "
              "`benchmarks/records/stage2.jsonl`. Redo: "
              "`python benchmarks/stage2_benchmark.py` (grid) and "
              "`... --libsvm=2000x12288,5000x12288,10000x12288`.", ""]
  if lib:
    lines += ["OC-SVM fit, scikit-learn computing its own RBF kernel "
              "(libsvm, before) against a BLAS kernel matrix given to libsvm "
              "as precomputed (`detectors.ocsvm`, after), same data; "
              "decisions compared on "
              f"{lib[0]['m']} scored rows (scoring was a BLAS matmul before "
              "and after):", "",
              "| n × d | libsvm fit (s) | ours fit (s) | fit speed-up | "
              "ours score (s) | same support set | same decisions | max rel. "
              "score diff | load before → after |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in lib:
      lines.append(
          f"| {r['n']} × {r['d']} | {r['libsvm_fit_s']:.1f} | "
          f"{r['ours_fit_s']:.1f} | "
          f"{r['libsvm_fit_s'] / r['ours_fit_s']:.1f}× | "
          f"{r['ours_score_s']:.1f} | "
          f"{'yes' if r['support_equal'] else 'NO'} "
          f"({r['num_support']} SVs) | "
          f"{'yes' if r['decisions_equal'] else 'NO'} | "
          f"{r['max_rel_diff']:.1e} | {r['load_before']} → "
          f"{r['load_after']} |")
    lines.append("")
  if grid:
    lines += [f"Every detector: fit on n × d, score {grid[0]['m']} rows; "
              "peak resident memory of the case's process, and before the "
              "fit (Python, the libraries and the float64 features):", "",
              "| detector | n × d | fit (s) | score (s) | peak memory (GiB) "
              "| before fit (GiB) | rows fitted | load before → after |",
              "|---|---|---|---|---|---|---|---|"]
    for r in grid:
      lines.append(
          f"| {r['detector']} | {r['n']} × {r['d']} | {r['fit_s']:.1f} | "
          f"{r['score_s']:.1f} | {r['peak_gib']:.1f} | "
          f"{r['before_fit_gib']:.1f} | {r['fit_rows']} | "
          f"{r['load_before']} → {r['load_after']} |")
  return "\n".join(lines) + "\n"


def main(argv):
  if FLAGS.case:
    name, shape = FLAGS.case.split(":")
    print(json.dumps(run_case(name, *_shape(shape), FLAGS.num_test,
                              FLAGS.seed)))
    return
  grid, libsvm = FLAGS.grid, FLAGS.libsvm
  if FLAGS.smoke:
    FLAGS.num_test, grid, libsvm = 50, "200x16", "150x16"
  out = pathlib.Path(FLAGS.out)
  records = _done(out)
  done = {_key(r) for r in records}
  cases = [("libsvm", "", *_shape(s)) for s in libsvm.split(",") if s]
  if FLAGS.smoke or not libsvm:  # --libsvm alone runs the comparison only.
    cases += [("grid", name, *_shape(s)) for s in grid.split(",")
              for name in FLAGS.detectors.split(",")]
  for kind, name, n, d in cases:
    key = (kind, name, n, d, FLAGS.num_test, FLAGS.seed)
    if key in done:
      continue
    load = os.getloadavg()[0]
    print(f"{kind} {name} {n}x{d} ...", flush=True)
    record = (run_libsvm(n, d, FLAGS.num_test, FLAGS.seed) if kind == "libsvm"
              else _child(name, n, d))
    record = _stamp(record, argv)
    record.update(load_before=round(load, 2),
                  load_after=round(os.getloadavg()[0], 2))
    _append(out, record)
    records.append(record)
    print(json.dumps(record), flush=True)
  text = table(records)
  print(text)
  if FLAGS.results_md and not FLAGS.smoke:
    write_section(pathlib.Path(FLAGS.results_md), text, TITLE)


if __name__ == "__main__":
  app.run(main)
