"""Multi30k NMT experiments (issue #5): supervised BLEU, the paper's initialisation table, unsupervised MT.

  python benchmarks/multi30k_nmt.py --bundle runs/m30k/mlm_tlm --workdir runs/m30k_nmt \
      --experiments init_table,supervised_de,unsupervised --steps 3000 --out benchmarks/results/multi30k_nmt.json

The data folder is configs/multi30k.py's default (../shared/data/multi30k; $XLM_JAX_MULTI30K overrides it).
All runs use `configs/nmt.py` with the same budget (steps, batch, learning rate) and the pretrained bundle's
shapes and tokenizer; BLEU is detokenized sacreBLEU on test_2016_flickr (all 1,000 sentences), greedy decoding.
- init_table: en<->fr supervised, encoder/decoder from {scratch, pretrained} x {scratch, pretrained};
- supervised_de: en<->de supervised, pretrained/pretrained;
- unsupervised: en<->fr with denoising + on-the-fly back-translation only, English from training lines
  0-14,499 and French from lines 14,500-28,999 (no pair ever seen), pretrained/pretrained vs scratch/scratch.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from xlm_jax.config_base import load_config, override
from xlm_jax.provenance import REPO
from xlm_jax.train import nmt


def run_one(name: str, variant: str, args, **overrides) -> dict:
  c = load_config(os.path.join(REPO, "configs", "nmt.py") + ":" + variant)
  c.init.bundle = args.bundle
  c.train.steps = args.steps
  c.nmt.bleu_split = "test"
  c.nmt.bleu_sentences = args.bleu_sentences
  c.nmt.sample_translations = 1
  c.log.eval_every = 0
  c.log.progress_bar = False
  c.checkpoint.every = args.steps
  override(c, overrides)
  t = time.time()
  metrics = nmt.run(c, os.path.join(args.workdir, name)).metrics
  result = {k: v for k, v in metrics.items() if "bleu" in k}
  result["seconds"] = time.time() - t
  result["steps"] = args.steps
  print(name, json.dumps(result), flush=True)
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--bundle", required=True, help="the pretraining workdir (MLM+TLM on Multi30k)")
  parser.add_argument("--unsup-bundle", default="", help="for unsupervised MT: an MLM pretraining on the same "
                      "disjoint halves (default: --bundle)")
  parser.add_argument("--workdir", default="runs/m30k_nmt")
  parser.add_argument("--experiments", default="init_table,supervised_de,unsupervised",
                      help="comma-separated; also single runs: enfr_<enc>_<dec> (enc, dec in scratch/pretrained)")
  parser.add_argument("--steps", type=int, default=3000)
  parser.add_argument("--unsup-steps", type=int, default=None)
  parser.add_argument("--bleu-sentences", type=int, default=0, help="0 = the whole test set")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  from xlm_jax.cli import enable_compilation_cache
  enable_compilation_cache("~/.cache/xlm_jax/jit")
  results = json.load(open(args.out)) if args.out and os.path.exists(args.out) else {}
  todo = [x.strip() for x in args.experiments.split(",") if x.strip()]
  for enc in ("scratch", "pretrained"):
    for dec in ("scratch", "pretrained"):
      if "init_table" in todo or f"enfr_{enc}_{dec}" in todo:
        results[f"enfr_{enc}_{dec}"] = run_one(f"enfr_{enc}_{dec}", "multi30k", args, **{
            "init.encoder": enc, "init.decoder": dec, "nmt.mt_steps": "en-fr,fr-en"})
  if "supervised_de" in todo:
    results["ende_pretrained_pretrained"] = run_one("ende_pretrained_pretrained", "multi30k", args, **{
        "nmt.mt_steps": "en-de,de-en"})
  unsup = [i for i in ("pretrained", "scratch") if "unsupervised" in todo or f"unsup_enfr_{i}" in todo]
  if unsup:
    steps = args.unsup_steps or args.steps
    saved = args.steps, args.bundle
    args.steps, args.bundle = steps, args.unsup_bundle or args.bundle
    for init in unsup:
      # denoising + back-translation alone, as this table was measured (multi30k_unsup now adds a word-by-word
      # start: benchmarks/multi30k_unmt.py)
      results[f"unsup_enfr_{init}"] = run_one(f"unsup_enfr_{init}", "multi30k_unsup", args, **{
          "init.encoder": init, "init.decoder": init, "nmt.mt_steps": "", "nmt.direction_corpora": ""})
    args.steps, args.bundle = saved
  import platform
  import jax
  results.setdefault("commands", [])
  results["commands"].append("python " + " ".join(sys.argv))
  results["machine"] = f"{jax.devices()[0].device_kind}, {os.cpu_count()} cpus, {platform.machine()}, jax {jax.__version__}"
  print(json.dumps(results, indent=1))
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
