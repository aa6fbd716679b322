#!/usr/bin/env bash
# Cloud TPU VM pod slice: copy the code to every worker, install the pinned requirements plus the TPU runtime,
# and run the same command on all workers (jax.distributed.initialize() detects the pod by itself).
# The workdir must be a GCS path or a shared filesystem (checkpoints and prepared data are shared).
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh --config=configs/xlm_paper.py:xlm_mlm_tlm_xnli15_1024 \
#       --workdir=gs://bucket/runs/xnli15 --config.data.corpus=gs://bucket/data/xnli15
#
# For queued resources (capacity requests), create the slice first:
#   gcloud compute tpus queued-resources create "$QR_ID" --node-id "$TPU_NAME" --zone "$ZONE" \
#       --accelerator-type v4-32 --runtime-version tpu-ubuntu2204-base
# Re-running the same command resumes from the newest complete checkpoint.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
JAX_TPU_VERSION=${JAX_TPU_VERSION:-0.10.2}
cd "$(dirname "$0")/.."
gcloud compute tpus tpu-vm scp --recurse --zone "$ZONE" --worker=all . "$TPU_NAME":~/xlm_jax
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  set -e; cd ~/xlm_jax
  python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt && \
    .venv/bin/pip install -q 'jax[tpu]==${JAX_TPU_VERSION}'
  .venv/bin/python main.py $*"
