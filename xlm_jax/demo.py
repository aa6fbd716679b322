"""The demo: pretrain on the generated corpus, then report held-out MLM perplexity and accuracy.

Everything lands in one workdir: `corpus/` (generated text), `tokenizer.json`, `data/` (prepared datasets),
`checkpoints/`, `metrics.jsonl`, `tensorboard/`. The final bundle opens with `xlm_jax.load(workdir)`.
"""
from __future__ import annotations

import time

import numpy as np

from xlm_jax.train import pretrain


def _summary(metrics: dict, objective: str = "mlm") -> tuple[float, float]:
  """Token-weighted over languages is not available from per-language means, so average the languages."""
  ppl = [v for k, v in metrics.items() if k.startswith(f"{objective}_") and k.endswith(f"/{objective}_ppl")]
  acc = [v for k, v in metrics.items() if k.startswith(f"{objective}_") and k.endswith(f"/{objective}_acc")]
  return float(np.mean(ppl)) if ppl else float("nan"), float(np.mean(acc)) if acc else float("nan")


def run(config, workdir: str) -> dict:
  start = time.time()
  pre = config.copy_and_resolve_references()
  with pre.unlocked():
    pre.task = "pretrain"
  metrics = pretrain.run(pre, workdir).metrics
  ppl, acc = _summary(metrics)
  lines = [f"demo finished in {time.time() - start:.0f}s; workdir {workdir}",
           f"held-out MLM perplexity {ppl:.2f}, accuracy {acc:.3f} (mean over languages)"]
  for k in sorted(metrics):
    if k.endswith("_ppl") or k.endswith("_acc"):
      lines.append(f"  {k} = {metrics[k]:.4f}")
  lines.append(f"open it with: python -c \"import xlm_jax; b = xlm_jax.load('{workdir}'); print(b.languages)\"")
  print("\n".join(lines), flush=True)
  return metrics
