#!/usr/bin/env bash
# Runs `python -m oneclass_jax.main` on this machine: one process (one GPU, or
# every GPU of a multi-GPU host), or N processes joined by jax.distributed.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "$0")/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/local.sh [options] -- MAIN_FLAGS...

Runs `python -m oneclass_jax.main MAIN_FLAGS` on this machine.

  One process (default) uses every local accelerator: one GPU, or all GPUs of a
  multi-GPU host (data parallel over them). With --num_processes=N it starts N
  processes joined by JAX's multi-process runtime (coordinator on 127.0.0.1),
  each one reading its own part of every global batch; the results equal one
  process with the same devices and global batch.

Options:
  --num_processes=N      processes to start (default 1)
  --gpus_per_process=G   give process i the GPUs i*G .. i*G+G-1 (CUDA_VISIBLE_DEVICES)
  --cpu_devices=K        run on CPU with K devices per process (tests, debugging)
  --port=P               coordinator port (default: a free one)
  --heartbeat_timeout=S  seconds before survivors give up on a dead process
                         (default: JAX's, 100)
  --log_dir=DIR          write process i's output to DIR/process_i.log
                         (default: the terminal, lines prefixed with [i])
  --python=PATH          interpreter (default: python3)
  --dry_run              print the commands and environment, run nothing
  --help                 this text

SIGTERM or SIGINT to this script is passed on to every process: they save a
checkpoint at the same step and exit with status 143; run the same command
again to resume. If one process dies, the others stop with an error naming the
fix (restart all) and this script exits non-zero.

Examples:
  launch/local.sh -- --config=configs/contrastive_da.py:dataset=cifar10 --workdir=runs/c10
  launch/local.sh --num_processes=8 --gpus_per_process=1 -- --config=... --workdir=...
  launch/local.sh --num_processes=2 --cpu_devices=4 -- --config=configs/quickstart.py --workdir=/tmp/q
USAGE
}

num_processes=1
gpus_per_process=""
cpu_devices=""
port=""
heartbeat=""
log_dir=""
python=python3
while [[ $# -gt 0 ]]; do
  case $1 in
    --num_processes=*) num_processes=$(flag_value "$1") ;;
    --gpus_per_process=*) gpus_per_process=$(flag_value "$1") ;;
    --cpu_devices=*) cpu_devices=$(flag_value "$1") ;;
    --port=*) port=$(flag_value "$1") ;;
    --heartbeat_timeout=*) heartbeat=$(flag_value "$1") ;;
    --log_dir=*) log_dir=$(flag_value "$1") ;;
    --python=*) python=$(flag_value "$1") ;;
    --dry_run) DRY_RUN=1 ;;
    --help | -h) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option $1 (main's flags go after --); see --help" ;;
  esac
  shift
done
[[ $# -gt 0 ]] || die "no flags for oneclass_jax.main after --; see --help"
[[ $num_processes =~ ^[1-9][0-9]*$ ]] || die "--num_processes must be >= 1"
[[ -z $gpus_per_process || $gpus_per_process =~ ^[1-9][0-9]*$ ]] ||
  die "--gpus_per_process must be >= 1"
[[ -z $cpu_devices || $cpu_devices =~ ^[1-9][0-9]*$ ]] ||
  die "--cpu_devices must be >= 1"
[[ -z $gpus_per_process || -z $cpu_devices ]] ||
  die "--gpus_per_process and --cpu_devices exclude each other"

common_env=()
if [[ -n $cpu_devices ]]; then
  # The YNNPACK fusions of XLA:CPU (jaxlib 0.10) gave NaN gradients in the
  # contrastive step when a process of a multi-process run holds several CPU
  # devices; they are turned off here (docs/deviations.md, "XLA:CPU").
  # Appended last, so these win over the same flags in $XLA_FLAGS.
  xla_flags="${XLA_FLAGS:+$XLA_FLAGS }"
  xla_flags+="--xla_force_host_platform_device_count=$cpu_devices"
  xla_flags+=" --xla_cpu_experimental_ynn_fusion_type="
  common_env+=(JAX_PLATFORMS=cpu "XLA_FLAGS=$xla_flags")
fi
main=("$python" -m oneclass_jax.main "$@")

if [[ $num_processes == 1 && -z $gpus_per_process ]]; then
  printf '+ %s\n' "$(quote_args env "${common_env[@]}" "${main[@]}")"
  [[ $DRY_RUN == 0 ]] || exit 0
  exec env "${common_env[@]}" "${main[@]}"
fi

if [[ -z $port ]]; then
  port=$("$python" -c 'import socket; s = socket.socket()
s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
common_env+=(ONECLASS_JAX_DISTRIBUTED=1
  "ONECLASS_JAX_COORDINATOR_ADDRESS=127.0.0.1:$port"
  "ONECLASS_JAX_NUM_PROCESSES=$num_processes")
if [[ -n $heartbeat ]]; then
  common_env+=("ONECLASS_JAX_HEARTBEAT_TIMEOUT_S=$heartbeat")
fi
[[ -z $log_dir || $DRY_RUN == 1 ]] || mkdir -p "$log_dir"

pids=()
# shellcheck disable=SC2317  # Called by the trap.
stop_all() {
  local pid
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
}
trap stop_all TERM INT

for ((i = 0; i < num_processes; i++)); do
  env_i=("${common_env[@]}" "ONECLASS_JAX_PROCESS_ID=$i")
  if [[ -n $gpus_per_process ]]; then
    first=$((i * gpus_per_process))
    devices=$(seq -s, "$first" $((first + gpus_per_process - 1)))
    env_i+=("CUDA_VISIBLE_DEVICES=$devices")
  fi
  if [[ $DRY_RUN == 1 ]]; then
    run env "${env_i[@]}" "${main[@]}"
    continue
  fi
  printf '+ %s &\n' "$(quote_args env "${env_i[@]}" "${main[@]}")"
  if [[ -n $log_dir ]]; then
    env "${env_i[@]}" "${main[@]}" >"$log_dir/process_$i.log" 2>&1 &
  else
    env "${env_i[@]}" "${main[@]}" > >(sed -u "s/^/[$i] /") 2>&1 &
  fi
  pids+=($!)
  echo "process $i: pid $!" >&2
done
[[ $DRY_RUN == 0 ]] || exit 0

status=0
for pid in "${pids[@]}"; do
  # `wait` also returns when a trapped signal arrives: wait until the process
  # is gone, then read its exit status.
  while kill -0 "$pid" 2>/dev/null; do
    wait "$pid" || true
  done
  rc=0
  wait "$pid" || rc=$?
  if [[ $rc != 0 && $status == 0 ]]; then
    status=$rc
  fi
done
exit "$status"
