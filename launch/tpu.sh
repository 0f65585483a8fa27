#!/usr/bin/env bash
# Cloud TPU VM lifecycle for oneclass_jax: create, install, run on every
# worker at once, follow logs, fetch results, delete. Plain gcloud commands;
# --dry_run prints them instead.
# shellcheck disable=SC2317  # The do_* functions are called as "do_$command".
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "$0")/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/tpu.sh COMMAND... --name=NAME --zone=ZONE [options] [-- MAIN_FLAGS...]

Commands, run in the order given (`all` = create install run fetch delete):
  create   create the TPU VM (a READY one is reused, a preempted one recreated)
  install  copy this checkout to every worker (without .git, runs/, results/,
           workdirs and wheels), make a Python 3.12 virtualenv there with uv
           (the runtimes' own python3 is 3.10; setup.py needs >= 3.11),
           install it with jax[tpu], gcsfs and google-cloud-storage (for
           gs:// workdirs), and copy --data to ~/tensorflow_datasets
  run      run `python -m oneclass_jax.main --workdir=WORKDIR MAIN_FLAGS` on
           all workers at once (--worker=all); JAX's multi-process runtime
           joins them, so a pod slice trains as one data-parallel job
  logs     follow the output of the run (needed after --detach) on --worker
  fetch    copy WORKDIR without its checkpoints to --dest
  delete   delete the TPU VM
In `all`, a failed run still fetches and deletes (a spot VM bills until it is
deleted); the exit status is the run's. Rerun the same command to resume from
the last checkpoint in WORKDIR.

Options:
  --name=NAME          TPU VM name (required)
  --zone=ZONE          e.g. us-central2-b (v4), us-west4-a (v5e) (required)
  --project=PROJECT    default: gcloud's configured project
  --accelerator=TYPE   v4-8 (default, one host), v4-32 (a pod slice: 4 hosts),
                       v5litepod-8, v5litepod-16, v5p-8, v6e-8, ...
  --version=RUNTIME    TPU software version (default from the generation:
                       v2/v3/v4 tpu-ubuntu2204-base, v5litepod
                       v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e
                       v2-alpha-tpuv6e)
  --spot               a Spot VM: cheaper, can be preempted at any time (the
                       run saves a checkpoint on SIGTERM and resumes on rerun)
  --workdir=URL        the run's workdir; use gs://BUCKET/PATH: every worker
                       must see the same checkpoints (run, fetch)
  --data=GCS_DIR       install: a prepared tfds data dir to copy to each worker
  --dest=DIR           fetch: local destination (default results/NAME)
  --detach             run: start in the background and return; see `logs`
  --worker=W           logs: the worker to follow (default 0)
  --dry_run            print the gcloud commands, run nothing
  --help               this text

Examples:
  launch/tpu.sh all --name=oc-v4 --zone=us-central2-b --accelerator=v4-8 --spot \
      --workdir=gs://my-bucket/runs/cifar10/contrastive_da/3/1 --data=gs://my-bucket/tfds -- \
      --config=configs/contrastive_da.py:dataset=cifar10,inlier_class=3,seed=1
  launch/tpu.sh run --detach --name=oc-pod --zone=us-central2-b --accelerator=v4-32 \
      --workdir=gs://my-bucket/runs/x -- --config=configs/rotation.py:dataset=cifar10
  launch/tpu.sh logs --name=oc-pod --zone=us-central2-b
USAGE
}

name=""
zone=""
project=""
accelerator=v4-8
version=""
spot=0
workdir=""
data=""
dest=""
detach=0
worker=0
commands=()
while [[ $# -gt 0 ]]; do
  case $1 in
    create | install | run | logs | fetch | delete) commands+=("$1") ;;
    all) commands+=(create install run fetch delete) ;;
    --name=*) name=$(flag_value "$1") ;;
    --zone=*) zone=$(flag_value "$1") ;;
    --project=*) project=$(flag_value "$1") ;;
    --accelerator=*) accelerator=$(flag_value "$1") ;;
    --version=*) version=$(flag_value "$1") ;;
    --spot) spot=1 ;;
    --workdir=*) workdir=$(flag_value "$1") ;;
    --data=*) data=$(flag_value "$1") ;;
    --dest=*) dest=$(flag_value "$1") ;;
    --detach) detach=1 ;;
    --worker=*) worker=$(flag_value "$1") ;;
    --dry_run) DRY_RUN=1 ;;
    --help | -h) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown argument $1 (main's flags go after --); see --help" ;;
  esac
  shift
done
main_flags=("$@")
[[ ${#commands[@]} -gt 0 ]] || die "no command given; see --help"
[[ -n $name ]] || die "--name is required"
[[ -n $zone ]] || die "--zone is required"
if [[ -z $version ]]; then
  case $accelerator in
    v2-* | v3-* | v4-*) version=tpu-ubuntu2204-base ;;
    v5litepod-* | v5e-*) version=v2-alpha-tpuv5-lite ;;
    v5p-*) version=v2-alpha-tpuv5 ;;
    v6e-*) version=v2-alpha-tpuv6e ;;
    *) die "no default --version for accelerator $accelerator;" \
      "pass --version" ;;
  esac
fi
where=("--zone=$zone")
[[ -z $project ]] || where+=("--project=$project")
# shellcheck disable=SC2088  # Expanded by the worker's shell, not here.
log_file='~/oneclass_jax_run.log'
# The workers' interpreter: a uv-managed CPython in its own virtualenv, so the
# runtime's system Python (3.10 on tpu-ubuntu2204-base) never matters.
# shellcheck disable=SC2088
venv='~/oneclass_venv'
python_version=3.12

tpu_vm() {
  run gcloud compute tpus tpu-vm "$@"
}

do_create() {
  local state="" create=(create "$name" "${where[@]}"
    "--accelerator-type=$accelerator" "--version=$version")
  [[ $spot == 0 ]] || create+=(--spot)
  if [[ $DRY_RUN == 0 ]]; then
    state=$(gcloud compute tpus tpu-vm describe "$name" "${where[@]}" \
      --format='value(state)' 2>/dev/null || true)
  fi
  case $state in
    READY) echo "TPU VM $name is READY: reusing it." ;;
    "") tpu_vm "${create[@]}" ;;
    *)
      echo "TPU VM $name is $state: recreating it."
      tpu_vm delete "$name" "${where[@]}" --quiet || return
      tpu_vm "${create[@]}"
      ;;
  esac
}

do_install() {
  local tarball="${TMPDIR:-/tmp}/oneclass_jax-$name.tgz" remote
  # Only the code travels: no history, caches, run outputs or wheels.
  run tar -czf "$tarball" --exclude=.git --exclude=__pycache__ \
    --exclude='*.egg-info' --exclude=.pytest_cache --exclude=./runs \
    --exclude=./results --exclude=./workdirs --exclude='*.whl' \
    --exclude=./dist --exclude=./build -C "$(repo_root)" . ||
    return
  tpu_vm scp "$tarball" "$name:~/oneclass_jax.tgz" "${where[@]}" \
    --worker=all || return
  remote="rm -rf ~/oneclass_jax && mkdir -p ~/oneclass_jax"
  remote+=" && tar -xzf ~/oneclass_jax.tgz -C ~/oneclass_jax"
  # uv from PyPI (a static binary; installs on the system Python 3.10), then
  # a managed CPython $python_version for the virtualenv.
  remote+=" && python3 -m pip install -q --user -U uv"
  remote+=" && ~/.local/bin/uv venv -q --clear --python $python_version $venv"
  remote+=" && ~/.local/bin/uv pip install -q --python $venv/bin/python"
  remote+=" -U 'jax[tpu]'"
  # gcsfs: gs:// paths in etils.epath (Orbax, the workdir);
  # google-cloud-storage: gs:// TensorBoard event files (tensorboardX).
  remote+=" && ~/.local/bin/uv pip install -q --python $venv/bin/python"
  remote+=" -e ~/oneclass_jax gcsfs google-cloud-storage"
  remote+=" && $venv/bin/python -c 'import sys, jax, oneclass_jax;"
  remote+=" print(sys.version.split()[0], jax.__version__)'"
  if [[ -n $data ]]; then
    remote+=" && mkdir -p ~/tensorflow_datasets"
    remote+=" && gcloud storage rsync -r $(quote "$data") ~/tensorflow_datasets"
  fi
  tpu_vm ssh "$name" "${where[@]}" --worker=all "--command=$remote"
}

do_run() {
  local inner remote
  [[ -n $workdir ]] || die "run needs --workdir (gs://BUCKET/PATH)"
  [[ ${#main_flags[@]} -gt 0 ]] || die "run needs main's flags after --"
  if [[ $workdir != gs://* ]]; then
    echo "warning: --workdir=$workdir is not on GCS; with several workers" \
      "each one would write its own copy." >&2
  fi
  inner="cd ~/oneclass_jax && ONECLASS_JAX_DISTRIBUTED=1 $venv/bin/python -m"
  inner+=" oneclass_jax.main"
  inner+=" $(quote_args "--workdir=$workdir" "${main_flags[@]}")"
  if [[ $detach == 1 ]]; then
    remote="nohup bash -c $(quote "$inner") > $log_file 2>&1 < /dev/null &"
  else
    remote="set -o pipefail; $inner 2>&1 | tee $log_file"
  fi
  tpu_vm ssh "$name" "${where[@]}" --worker=all "--command=$remote"
}

do_logs() {
  tpu_vm ssh "$name" "${where[@]}" "--worker=$worker" \
    "--command=tail -n +1 -F $log_file"
}

do_fetch() {
  [[ -n $workdir ]] || die "fetch needs --workdir"
  local to=${dest:-results/$name}
  run mkdir -p "$to" || return
  if [[ $workdir == gs://* ]]; then
    run gcloud storage rsync -r '--exclude=checkpoints/.*' "$workdir" "$to"
  else
    tpu_vm scp --recurse "$name:$workdir" "$to" "${where[@]}" --worker=0
  fi
}

do_delete() {
  tpu_vm delete "$name" "${where[@]}" --quiet
}

status=0
for command in "${commands[@]}"; do
  # After a failure only fetch and delete still run.
  if [[ $status != 0 && $command != fetch && $command != delete ]]; then
    continue
  fi
  "do_$command" || status=$?
done
exit "$status"
