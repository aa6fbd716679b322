#!/usr/bin/env bash
# Run N processes of one training job on this machine (CPU), talking through JAX's distributed runtime on
# 127.0.0.1: the multi-host code path (per-process data, global arrays, multi-process checkpoints) without a
# cluster. Each process gets DEVICES fake CPU devices.
#
#   launch/local_multiprocess.sh 2 4 --config=configs/demo.py:pretrain --workdir=runs/mp
#
# Usage: local_multiprocess.sh NUM_PROCESSES DEVICES_PER_PROCESS [main.py flags ...]
set -euo pipefail
n=${1:?number of processes}; devices=${2:?fake CPU devices per process}; shift 2
cd "$(dirname "$0")/.."
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
pids=()
for ((i = 0; i < n; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=${devices}" JAX_PLATFORMS=cpu \
    python3 main.py "$@" --config.distributed.coordinator="127.0.0.1:${port}" \
      --config.distributed.num_processes="${n}" --config.distributed.process_id="${i}" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
