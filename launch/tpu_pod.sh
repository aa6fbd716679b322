#!/usr/bin/env bash
# Cloud TPU VM pod slice: create (or reuse) the slice, copy the code to every worker (without .git, venvs, runs or
# logs), install Python 3.11 (the stock TPU VM image has 3.10; our pins need 3.11), the pinned requirements and the
# TPU runtime (requirements-tpu.txt) on every worker, and start main.py on all workers in the background, one log
# per worker (~/xlm_jax/logs/<hostname>.log). jax.distributed.initialize() detects the pod by itself.
#
#   TPU_NAME=xnli15 ZONE=us-central2-b ACCELERATOR=v4-32 launch/tpu_pod.sh run \
#       --config=configs/xlm_paper.py:xlm_mlm_tlm_xnli15_1024 --workdir=gs://bucket/runs/xnli15 \
#       --config.data.corpus=gs://bucket/data/xnli15
#   launch/tpu_pod.sh status | logs [WORKER] | stop | delete
#   launch/tpu_pod.sh --dry-run run ...      # print every command, run nothing
#
# Commands:
#   run     create or reuse the slice, copy, install, start (re-running it resumes from the newest checkpoint)
#   status  per worker: is main.py running, and the last log line
#   logs    follow the log of one worker (default 0)
#   stop    SIGTERM to main.py on every worker: the run saves a checkpoint and stops
#   delete  delete the slice (or the queued resource)
# Environment: TPU_NAME, ZONE (required); ACCELERATOR (v4-32), RUNTIME (tpu-ubuntu2204-base), PROJECT (gcloud's
# default), QUEUED=1 to request the slice as a queued resource, SPOT=1 for spot capacity.
# The workdir must be a gs:// path or a filesystem every worker sees (checkpoints and prepared data are shared).
set -euo pipefail

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then dry_run=1; shift; fi
command=${1:-}
[[ $# -gt 0 ]] && shift
case "$command" in
  run|status|logs|stop|delete) ;;
  -h|--help|"") sed -n '2,25p' "$0"; [[ -n "$command" ]]; exit $? ;;
  *) echo "error: unknown command '$command'; use run, status, logs, stop or delete (see --help)." >&2; exit 2 ;;
esac
: "${TPU_NAME:?set TPU_NAME to the slice name}" "${ZONE:?set ZONE, e.g. us-central2-b}"
accelerator=${ACCELERATOR:-v4-32}
runtime=${RUNTIME:-tpu-ubuntu2204-base}
gcloud_flags=(--zone "$ZONE")
if [[ -n "${PROJECT:-}" ]]; then gcloud_flags+=(--project "$PROJECT"); fi
remote_dir=xlm_jax
cd "$(dirname "$0")/.."

# Words as a shell would need them: plain when safe, else in single quotes.
quote() {
  local out=() word
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
      out+=("$word")
    else
      out+=("'${word//\'/\'\\\'\'}'")
    fi
  done
  echo "${out[*]}"
}

# Print (dry run) or run one command.
step() {
  if [[ $dry_run -eq 1 ]]; then
    quote "$@"
  else
    "$@"
  fi
}

on_workers() {  # on_workers WORKER REMOTE_COMMAND
  step gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_flags[@]}" --worker="$1" --command "$2"
}

create_or_reuse() {
  if [[ $dry_run -eq 1 ]]; then
    echo "# reuse the slice if this succeeds, else create it:"
    step gcloud compute tpus tpu-vm describe "$TPU_NAME" "${gcloud_flags[@]}" --format='value(state)'
  elif gcloud compute tpus tpu-vm describe "$TPU_NAME" "${gcloud_flags[@]}" --format='value(state)' >/dev/null 2>&1
  then
    echo "reusing TPU slice $TPU_NAME"
    return
  fi
  local capacity=()
  if [[ "${SPOT:-0}" == 1 ]]; then capacity=(--spot); fi
  if [[ "${QUEUED:-0}" == 1 ]]; then
    step gcloud compute tpus queued-resources create "$TPU_NAME" --node-id "$TPU_NAME" "${gcloud_flags[@]}" \
      --accelerator-type "$accelerator" --runtime-version "$runtime" "${capacity[@]}"
    if [[ $dry_run -eq 1 ]]; then
      echo "# poll until the queued resource is ACTIVE:"
      step gcloud compute tpus queued-resources describe "$TPU_NAME" "${gcloud_flags[@]}" --format='value(state.state)'
    else
      until [[ "$(gcloud compute tpus queued-resources describe "$TPU_NAME" "${gcloud_flags[@]}" \
                  --format='value(state.state)')" == ACTIVE ]]; do
        echo "waiting for queued resource $TPU_NAME to become ACTIVE..."; sleep 60
      done
    fi
  else
    step gcloud compute tpus tpu-vm create "$TPU_NAME" "${gcloud_flags[@]}" --accelerator-type "$accelerator" \
      --version "$runtime" "${capacity[@]}"
  fi
}

case "$command" in
  run)
    if [[ $# -eq 0 ]]; then echo "error: run needs main.py flags (--config=... --workdir=...)." >&2; exit 2; fi
    create_or_reuse
    archive=${TMPDIR:-/tmp}/xlm_jax_code.tgz
    step tar --exclude=./.git --exclude='./.venv*' --exclude=./runs --exclude=./logs --exclude='*/__pycache__' \
      --exclude=./.pytest_cache -czf "$archive" .
    step gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME":xlm_jax_code.tgz "${gcloud_flags[@]}" --worker=all
    setup="set -e; mkdir -p ~/$remote_dir && tar -xzf ~/xlm_jax_code.tgz -C ~/$remote_dir && cd ~/$remote_dir"
    setup+="; if ! command -v python3.11 >/dev/null; then sudo add-apt-repository -y ppa:deadsnakes/ppa"
    setup+=" && sudo apt-get update -q && sudo apt-get install -y -q python3.11 python3.11-venv; fi"
    setup+="; [ -x .venv/bin/python ] || python3.11 -m venv .venv"
    setup+="; .venv/bin/pip install -q -r requirements.txt -r requirements-tpu.txt -r requirements-gcs.txt"
    on_workers all "$setup"
    start="cd ~/$remote_dir && mkdir -p logs && nohup .venv/bin/python main.py $(quote "$@")"
    start+=" > logs/\$(hostname).log 2>&1 < /dev/null & echo \$! > logs/main.pid"
    on_workers all "$start"
    [[ $dry_run -eq 1 ]] && prefix="# " || prefix=""
    echo "${prefix}started on every worker of $TPU_NAME; follow with: $0 logs  (status: $0 status, stop: $0 stop)"
    ;;
  status)
    on_workers all "cd ~/$remote_dir && if kill -0 \$(cat logs/main.pid 2>/dev/null) 2>/dev/null; then echo \"\$(hostname): running\"; else echo \"\$(hostname): not running\"; fi; tail -n 1 logs/\$(hostname).log"
    ;;
  logs)
    on_workers "${1:-0}" "tail -n 200 -F ~/$remote_dir/logs/\$(hostname).log"
    ;;
  stop)
    on_workers all "kill -TERM \$(cat ~/$remote_dir/logs/main.pid) 2>/dev/null || true"
    ;;
  delete)
    if [[ "${QUEUED:-0}" == 1 ]]; then
      step gcloud compute tpus queued-resources delete "$TPU_NAME" "${gcloud_flags[@]}" --force --quiet
    else
      step gcloud compute tpus tpu-vm delete "$TPU_NAME" "${gcloud_flags[@]}" --quiet
    fi
    ;;
esac
