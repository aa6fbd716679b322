#!/usr/bin/env bash
# The Multi30k experiments of issues #4 and #5 on one GPU, as run for docs/results.md. Two phases, each under ten
# minutes on one H100, several runs side by side on the one GPU (small models; the input pipeline runs on the
# host cores):
#
#   XLM_JAX_MULTI30K=/path/to/multi30k benchmarks/gpu_experiments.sh pretrain OUT_DIR
#   XLM_JAX_MULTI30K=/path/to/multi30k benchmarks/gpu_experiments.sh nmt OUT_DIR
#
# pretrain: MLM+TLM on en/fr/de (configs/multi30k.py:small; packing, TLM-context and Czech figures), an MLM-only
#           pretraining on disjoint halves of en and fr (the bundle for unsupervised MT), and the two Czech runs.
# nmt:      the initialisation table (en<->fr), supervised en<->de, unsupervised en<->fr (pretrained, scratch).
# Runs go to RUNS (default .gpu_runs); the JSON results to OUT_DIR. CZECH_RUNS='' skips the Czech runs (NMT_RUNS, UNSUP_RUNS
# likewise choose NMT runs); STEPS,
# CS_STEPS, NMT_STEPS and UNSUP_STEPS set the budgets. Works on CPU too, only much slower.
set -euo pipefail
phase=${1:?pretrain or nmt}; out=${2:?output directory}
cd "$(dirname "$0")/.."
runs=${RUNS:-.gpu_runs}
mkdir -p "$runs" "$out"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.12} PYTHONUNBUFFERED=1
steps=${STEPS:-6000}; cs_steps=${CS_STEPS:-3000}; nmt_steps=${NMT_STEPS:-3000}; unsup_steps=${UNSUP_STEPS:-3000}
pids=()
launch() { local log=$1; shift; "$@" > "$out/$log.log" 2>&1 & pids+=($!); }
finish() {
  local status=0
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  for f in "$out"/*.log; do echo "== $f"; grep -v -E "Downloading and preparing|Dataset tokenized_text" "$f" | tail -n 12; done
  return $status
}

if [ "$phase" = pretrain ]; then
  if [ -n "${CZECH_RUNS-x}" ]; then
    PYTHONPATH=benchmarks python3 -c "import multi30k_pretrain as m; m.shared_tokenizer('$runs/czech', 'small')"
  fi
  launch mlm_tlm python3 benchmarks/multi30k_pretrain.py --variant small --workdir "$runs/m30k" --steps "$steps" \
      --skip-czech --out "$out/multi30k_pretrain.json"
  launch halves python3 main.py --config=configs/multi30k.py:small --workdir="$runs/halves" \
      --config.data.languages=en,fr --config.data.mlm_steps=en,fr --config.data.mono_lines=en:0:14500,fr:14500:29000 \
      --config.train.steps="$steps" --config.log.progress_bar=False
  for run in ${CZECH_RUNS-cs_alone cs_plus_en_de_fr}; do
    launch "$run" python3 benchmarks/multi30k_pretrain.py --variant small --workdir "$runs/czech" \
        --only-czech "$run" --czech-steps "$cs_steps" --out "$out/czech_$run.json"
  done
  finish
elif [ "$phase" = nmt ]; then
  for run in ${NMT_RUNS-enfr_scratch_scratch enfr_pretrained_scratch enfr_scratch_pretrained enfr_pretrained_pretrained \
             supervised_de}; do
    launch "$run" python3 benchmarks/multi30k_nmt.py --bundle "$runs/m30k/mlm_tlm" --workdir "$runs/nmt" \
        --experiments "$run" --steps "$nmt_steps" --out "$out/nmt_$run.json"
  done
  for run in ${UNSUP_RUNS-unsup_enfr_pretrained unsup_enfr_scratch}; do
    launch "$run" python3 benchmarks/multi30k_nmt.py --bundle "$runs/m30k/mlm_tlm" --unsup-bundle "$runs/halves" \
        --workdir "$runs/nmt" --experiments "$run" --unsup-steps "$unsup_steps" --out "$out/nmt_$run.json"
  done
  finish
else
  echo "unknown phase $phase (pretrain or nmt)" >&2; exit 2
fi
