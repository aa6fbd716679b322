"""The demo: the whole chain at toy scale on the project's generated corpus.

1. pretraining (MLM on each language + TLM on every language pair) in `WORKDIR/pretrain`;
2. an NMT model whose encoder and decoder both start from that checkpoint, trained on xa<->xb pairs, in
   `WORKDIR/nmt`;
3. held-out numbers: MLM perplexity and accuracy of the pretrained model, BLEU of the translation model on the
   generated test set (detokenized sacreBLEU).
Both checkpoints open with `xlm_jax.load(...)`. Re-running the command resumes where it stopped.
"""
from __future__ import annotations

import os
import time

import numpy as np

from xlm_jax.train import nmt, pretrain


def _mean_over(metrics: dict, prefix: str, suffix: str) -> float:
  values = [v for k, v in metrics.items() if k.startswith(prefix) and k.endswith(suffix)]
  return float(np.mean(values)) if values else float("nan")


def run(config, workdir: str) -> dict:
  start = time.time()
  pre_dir, nmt_dir = os.path.join(workdir, "pretrain"), os.path.join(workdir, "nmt")
  pre = config.copy_and_resolve_references()
  with pre.unlocked():
    pre.task = "pretrain"
  metrics = pretrain.run(pre, pre_dir).metrics
  pre_seconds = time.time() - start

  mt = config.copy_and_resolve_references()
  with mt.unlocked():
    mt.task = "nmt"
    mt.init.bundle = pre_dir
    mt.train.steps = config.demo.nmt_steps
    mt.train.lr = config.demo.nmt_lr
    mt.train.warmup_steps = config.demo.nmt_warmup_steps
    mt.nmt.bleu_split = "test"
    mt.log.eval_every = 0
  nmt_metrics = nmt.run(mt, nmt_dir).metrics
  ppl, acc = _mean_over(metrics, "mlm_", "/mlm_ppl"), _mean_over(metrics, "mlm_", "/mlm_acc")
  tlm_acc = _mean_over(metrics, "tlm_", "/tlm_acc")
  lines = [f"demo finished in {time.time() - start:.0f}s (pretraining {pre_seconds:.0f}s); workdir {workdir}",
           f"held-out MLM perplexity {ppl:.2f}, accuracy {acc:.3f} (mean over languages); TLM accuracy {tlm_acc:.3f}"]
  for key in sorted(k for k in nmt_metrics if k.startswith("bleu_")):
    lines.append(f"held-out BLEU {key[5:]}: {nmt_metrics[key]:.2f} (sacreBLEU, generated test set)")
  lines.append(f"open them with: xlm_jax.load('{pre_dir}'), xlm_jax.load('{nmt_dir}')")
  print("\n".join(lines), flush=True)
  return {**metrics, **{f"nmt/{k}": v for k, v in nmt_metrics.items()}}
