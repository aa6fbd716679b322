#!/usr/bin/env bash
# Run N processes of one training job on this machine (CPU), talking through JAX's distributed runtime on
# 127.0.0.1: the multi-host code path (per-process data, global arrays, multi-process checkpoints) without a
# cluster. Each process gets D fake CPU devices and writes its output to LOGDIR/process<i>.log.
#
#   launch/local_multiprocess.sh 2 2 --config=configs/demo.py:pretrain --workdir=runs/mp
#   launch/local_multiprocess.sh --dry-run 2 2 --config=configs/demo.py:pretrain --workdir=runs/mp
#
# Usage: local_multiprocess.sh [--dry-run] [--logdir DIR] [--port PORT] N D [main.py flags ...]
#   --dry-run   print every command it would run, run nothing
#   --logdir    where the per-process logs go (default: logs/local_multiprocess)
#   --port      coordinator port (default: a free port)
# Environment: PYTHON (default python3). The exit status is the first non-zero status of the processes.
set -euo pipefail

dry_run=0
logdir=logs/local_multiprocess
port=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --logdir) logdir=${2:?--logdir needs a directory}; shift 2 ;;
    --port) port=${2:?--port needs a number}; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
if [[ $# -lt 2 ]]; then
  echo "usage: $0 [--dry-run] [--logdir DIR] [--port PORT] NUM_PROCESSES DEVICES_PER_PROCESS [main.py flags ...]" >&2
  exit 2
fi
n=$1
devices=$2
shift 2
if ! [[ "$n" =~ ^[1-9][0-9]*$ && "$devices" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: NUM_PROCESSES and DEVICES_PER_PROCESS must be positive integers, got '$n' and '$devices'." >&2
  exit 2
fi
python=${PYTHON:-python3}
cd "$(dirname "$0")/.."
if [[ -z "$port" ]]; then
  port=$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi

commands=()
for ((i = 0; i < n; i++)); do
  printf -v cmd '%q ' env "XLA_FLAGS=--xla_force_host_platform_device_count=${devices}" JAX_PLATFORMS=cpu \
    "$python" main.py "$@" "--config.distributed.coordinator=127.0.0.1:${port}" \
    "--config.distributed.num_processes=${n}" "--config.distributed.process_id=${i}"
  commands+=("${cmd% }")
done

if [[ $dry_run -eq 1 ]]; then
  echo "mkdir -p $(printf '%q' "$logdir")"
  for ((i = 0; i < n; i++)); do
    echo "${commands[$i]} > $(printf '%q' "$logdir/process$i.log") 2>&1 &"
  done
  echo "wait"
  exit 0
fi

mkdir -p "$logdir"
pids=()
for ((i = 0; i < n; i++)); do
  bash -c "exec ${commands[$i]}" > "$logdir/process$i.log" 2>&1 &
  pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
status=0
for i in "${!pids[@]}"; do
  code=0
  wait "${pids[$i]}" || code=$?
  if [[ $code -ne 0 ]]; then
    echo "process $i exited with status $code; see $logdir/process$i.log" >&2
    [[ $status -eq 0 ]] && status=$code
  fi
done
exit "$status"
