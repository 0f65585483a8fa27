#!/usr/bin/env bash
# The GPU benchmark: one command, one GPU (sized for an H200), under 8 minutes.
#
#   bash benchmarks/gpu_benchmark.sh [--out=DIR] [--archive=PATH] [--budget_s=450]
#   bash benchmarks/gpu_benchmark.sh --smoke          # tiny, any machine (CI)
#   bash benchmarks/gpu_benchmark.sh --download-wheels   # on a networked machine
#
# Prints (and writes to DIR/report.md): contrastive-DA, ResNet-18 width 1,
# batch 32, K = 1 and K = 10 models x float32 / bfloat16: images/s and the
# fraction of the measured bfloat16 matmul peak; then trains all 10 CIFAR-10
# classes at once for the epochs that fit the time left and prints their KDE /
# OC-SVM AUCs, and how long Table 2's CIFAR-10 column (10 classes x 5 seeds,
# 2,048 epochs) takes at the measured rate. Details: gpu_benchmark.py.
#
# What the GPU machine needs:
# - jax with CUDA, flax, optax, orbax-checkpoint, scikit-learn, numpy
#   (assumed installed; no TensorFlow is needed anywhere).
# - cifar10_jpeg.tar.gz (the CIFAR-10 JPEG copy of shared/data/) beside this
#   script, or --archive=PATH.
# - The other packages oneclass_jax imports (benchmarks/gpu_requirements.txt).
#   A machine without network gets them as wheels. On a networked machine, in
#   this repository, run
#       bash benchmarks/gpu_benchmark.sh --download-wheels
#   which does (PYTHON_VERSION defaults to 3.12, the GPU machine's Python):
#       pip download --dest wheels --no-deps --only-binary=:all: \
#           --python-version 3.12 --implementation cp \
#           --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
#           -r benchmarks/gpu_requirements.txt
#       pip wheel --no-deps --wheel-dir wheels promise==2.3  # sdist only
#   (about 17 MB) and copy the repository, wheels/ included, to the GPU
#   machine. There this script first runs
#       pip install --no-index --no-deps wheels/*.whl
#   (WHEELS=DIR points elsewhere). --no-deps installs exactly these: their
#   own dependencies are either already there (protobuf, etils, absl) or
#   never imported by oneclass_jax (tensorflow-datasets' pyarrow, dm-tree).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
PYTHON="${PYTHON:-python3}"
WHEELS="${WHEELS:-$REPO/wheels}"
BUDGET_S=450
ARCHIVE=""
ARGS=()
for arg in "$@"; do
  case "$arg" in
    --archive=*) ARCHIVE="${arg#--archive=}" ;;
    --budget_s=*) BUDGET_S="${arg#--budget_s=}" ;;
    --download-wheels)
      version="${PYTHON_VERSION:-3.12}"
      "$PYTHON" -m pip download --dest "$WHEELS" --no-deps \
        --only-binary=:all: --python-version "$version" --implementation cp \
        --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
        -r "$HERE/gpu_requirements.txt"
      "$PYTHON" -m pip wheel --no-deps --wheel-dir "$WHEELS" promise==2.3
      echo "Wheels for Python $version in $WHEELS; copy them with the repository."
      exit 0 ;;
    *) ARGS+=("$arg") ;;
  esac
done
START=$(date +%s)

if [[ -z "$ARCHIVE" ]]; then
  for candidate in "$HERE/cifar10_jpeg.tar.gz" "$REPO/cifar10_jpeg.tar.gz" \
      "$REPO/shared/data/cifar10_jpeg.tar.gz" \
      "$REPO/../shared/data/cifar10_jpeg.tar.gz"; do
    if [[ -f "$candidate" ]]; then ARCHIVE="$candidate"; break; fi
  done
fi
if [[ -z "$ARCHIVE" || ! -f "$ARCHIVE" ]]; then
  echo "cifar10_jpeg.tar.gz not found: copy it beside $0 or pass" \
    "--archive=PATH." >&2
  exit 2
fi

if compgen -G "$WHEELS/*.whl" > /dev/null; then
  echo "Installing the wheels in $WHEELS (offline, no dependencies)."
  "$PYTHON" -m pip install --quiet --no-index --no-deps "$WHEELS"/*.whl
fi

# Fail in seconds, naming what is missing, rather than minutes in.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PYTHON" -c "import oneclass_jax.trainer.multi, oneclass_jax.tools.evaluate" \
    2> /tmp/gpu_benchmark_import.$$; then
  tail -n 3 /tmp/gpu_benchmark_import.$$ >&2
  rm -f /tmp/gpu_benchmark_import.$$
  echo "oneclass_jax cannot be imported here: bring the packages of" \
    "benchmarks/gpu_requirements.txt as wheels (see the top of $0)." >&2
  exit 3
fi
rm -f /tmp/gpu_benchmark_import.$$

exec "$PYTHON" "$HERE/gpu_benchmark.py" --archive="$ARCHIVE" \
  --deadline=$((START + BUDGET_S)) ${ARGS[@]+"${ARGS[@]}"}
