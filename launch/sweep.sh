#!/usr/bin/env bash
# Runs a list of (dataset, class, method, seed) jobs, skipping finished ones:
# on this machine one after another, or on TPU VMs (one per job, or several
# jobs per VM in turn).
# shellcheck disable=SC2317  # run_group is called in a subshell.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "$0")/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/sweep.sh --jobs=FILE --root=DIR_OR_URL [options] [-- MAIN_FLAGS...]

FILE holds one job per line, `DATASET CLASS METHOD SEED` (METHOD names
configs/METHOD.py); blank lines and `#` comments are ignored. Job i trains
  --config=configs/METHOD.py:dataset=DATASET,inlier_class=CLASS,seed=SEED
  --workdir=ROOT/DATASET/METHOD/CLASS/SEED  MAIN_FLAGS
A job whose workdir holds results.json is finished and skipped, so a sweep
restarted after a kill or a preemption redoes only the unfinished jobs, each
resuming from its last checkpoint. The check runs
`python3 -m oneclass_jax.tools.unfinished` here (gs:// needs gcsfs).

Options:
  --jobs=FILE          the job list (required)
  --root=DIR_OR_URL    parent of the workdirs (required): a local directory,
                       or for TPU VMs gs://... (or a file system mounted at
                       the same path here and on every VM)
  --backend=B          local (default): jobs in turn through launch/local.sh;
                       tpu: through launch/tpu.sh on TPU VMs
  --log_dir=DIR        tpu: one log per VM (default sweep_logs)
  --python=PATH        interpreter for the results check and local runs
                       (default python3)
  --dry_run            print the commands, run nothing (the results check
                       still runs, so only unfinished jobs are shown)
  --help               this text
 local backend, passed to launch/local.sh:
  --num_processes=N --gpus_per_process=G --cpu_devices=K --heartbeat_timeout=S
 tpu backend:
  --jobs_per_vm=N      unfinished jobs per VM, run in turn (default 1: one VM
                       per job); the VMs run in parallel and are deleted after
  --name_prefix=P      VMs are named P-0, P-1, ... (default oneclass)
  --zone= --project= --accelerator= --version= --spot --data=
                       passed to launch/tpu.sh (see its --help)

Examples:
  launch/sweep.sh --jobs=jobs.txt --root=runs -- --config.total_epochs=64
  launch/sweep.sh --backend=tpu --jobs=jobs.txt --root=gs://my-bucket/runs \
      --jobs_per_vm=5 --zone=us-central2-b --accelerator=v4-8 --spot \
      --data=gs://my-bucket/tfds
USAGE
}

here=$(dirname "$0")
jobs_file=""
root=""
backend=local
log_dir=sweep_logs
python=python3
jobs_per_vm=1
prefix=oneclass
local_opts=()
tpu_opts=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --jobs=*) jobs_file=$(flag_value "$1") ;;
    --root=*) root=$(flag_value "$1") ;;
    --backend=*) backend=$(flag_value "$1") ;;
    --log_dir=*) log_dir=$(flag_value "$1") ;;
    --python=*) python=$(flag_value "$1"); local_opts+=("$1") ;;
    --jobs_per_vm=*) jobs_per_vm=$(flag_value "$1") ;;
    --name_prefix=*) prefix=$(flag_value "$1") ;;
    --num_processes=* | --gpus_per_process=* | --cpu_devices=* | \
      --heartbeat_timeout=*) local_opts+=("$1") ;;
    --zone=* | --project=* | --accelerator=* | --version=* | --data=*)
      tpu_opts+=("$1") ;;
    --spot) tpu_opts+=("$1") ;;
    --dry_run) DRY_RUN=1 ;;
    --help | -h) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option $1 (main's flags go after --); see --help" ;;
  esac
  shift
done
extra=("$@")
[[ -n $jobs_file ]] || die "--jobs is required"
[[ -f $jobs_file ]] || die "jobs file $jobs_file not found"
[[ -n $root ]] || die "--root is required"
[[ $backend == local || $backend == tpu ]] ||
  die "--backend must be local or tpu, not $backend"
[[ $jobs_per_vm =~ ^[1-9][0-9]*$ ]] || die "--jobs_per_vm must be >= 1"
if [[ $root != gs://* ]]; then
  root=$(realpath -m "$root")  # Workdirs must not depend on the cwd.
fi
[[ $DRY_RUN == 0 ]] || local_opts+=(--dry_run) tpu_opts+=(--dry_run)

workdirs=()
configs=()
line_no=0
while IFS= read -r line || [[ -n $line ]]; do
  line_no=$((line_no + 1))
  line=${line%%#*}
  read -r -a fields <<<"$line"
  [[ ${#fields[@]} -gt 0 ]] || continue
  [[ ${#fields[@]} == 4 ]] ||
    die "$jobs_file:$line_no: expected DATASET CLASS METHOD SEED, got '$line'"
  dataset=${fields[0]} class=${fields[1]} method=${fields[2]} seed=${fields[3]}
  [[ -f $here/../configs/$method.py ]] ||
    die "$jobs_file:$line_no: no config configs/$method.py"
  workdirs+=("$root/$dataset/$method/$class/$seed")
  configs+=("$method.py:dataset=$dataset,inlier_class=$class,seed=$seed")
done <"$jobs_file"
[[ ${#workdirs[@]} -gt 0 ]] || die "$jobs_file lists no jobs"

# A command substitution (not `mapfile < <(...)`) so that a failing check
# stops the sweep instead of reading as "every job finished"; membership by an
# associative array, not `printf | grep -q`, which under pipefail reads a
# SIGPIPE'd printf (grep quits at the first match) as "not found" and so
# skipped unfinished jobs at random.
open_list=$(cd "$here/.." &&
  "$python" -m oneclass_jax.tools.unfinished "${workdirs[@]}") ||
  die "could not check which jobs are finished (error above)"
declare -A is_open=()
while IFS= read -r dir; do
  if [[ -n $dir ]]; then is_open[$dir]=1; fi
done <<<"$open_list"
todo=()
for i in "${!workdirs[@]}"; do
  if [[ -n ${is_open[${workdirs[$i]}]+x} ]]; then
    todo+=("$i")
  else
    echo "skip (finished): ${workdirs[$i]}"
  fi
done
echo "${#todo[@]} of ${#workdirs[@]} jobs to run."
[[ ${#todo[@]} -gt 0 ]] || exit 0

failed=0
if [[ $backend == local ]]; then
  configs_dir=$(cd "$here/../configs" && pwd)
  for i in "${todo[@]}"; do
    echo "== job: ${workdirs[$i]}"
    "$here/local.sh" "${local_opts[@]}" -- \
      "--config=$configs_dir/${configs[$i]}" "--workdir=${workdirs[$i]}" \
      "${extra[@]}" || {
      echo "job failed: ${workdirs[$i]}"
      failed=$((failed + 1))
    }
  done
else
  run_group() {  # $1: VM name; then job indices.
    local vm=$1 i status=0
    shift
    "$here/tpu.sh" create install "--name=$vm" "${tpu_opts[@]}" || return
    for i in "$@"; do
      echo "== job: ${workdirs[$i]} on $vm"
      "$here/tpu.sh" run "--name=$vm" "${tpu_opts[@]}" \
        "--workdir=${workdirs[$i]}" -- "--config=configs/${configs[$i]}" \
        "${extra[@]}" || { echo "job failed: ${workdirs[$i]}"; status=1; }
    done
    "$here/tpu.sh" delete "--name=$vm" "${tpu_opts[@]}" || status=1
    return "$status"
  }
  pids=()
  names=()
  [[ $DRY_RUN == 1 ]] || mkdir -p "$log_dir"
  for ((g = 0; g * jobs_per_vm < ${#todo[@]}; g++)); do
    group=("${todo[@]:g * jobs_per_vm:jobs_per_vm}")
    vm="$prefix-$g"
    if [[ $DRY_RUN == 1 ]]; then
      run_group "$vm" "${group[@]}" || failed=$((failed + 1))
      continue
    fi
    echo "VM $vm: ${#group[@]} job(s), log $log_dir/$vm.log"
    run_group "$vm" "${group[@]}" >"$log_dir/$vm.log" 2>&1 &
    pids+=($!)
    names+=("$vm")
  done
  for k in "${!pids[@]}"; do
    wait "${pids[$k]}" || {
      echo "VM ${names[$k]} had failures: see $log_dir/${names[$k]}.log"
      failed=$((failed + 1))
    }
  done
fi
if [[ $failed -gt 0 ]]; then
  echo "$failed failed; rerun the same command to retry" \
    "(finished jobs are skipped)."
  exit 1
fi
if [[ $DRY_RUN == 1 ]]; then
  echo "Dry run: nothing was run."
else
  echo "All jobs done."
fi
