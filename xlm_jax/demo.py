"""The demo: the whole chain at toy scale on the project's generated corpus.

1. pretraining (MLM on each language + TLM on the xa-xb pair, both orders) in `WORKDIR/pretrain`;
2. an NMT model whose encoder and decoder both start from that checkpoint, trained on xa<->xb pairs, in
   `WORKDIR/nmt`;
3. held-out numbers, printed and written to `WORKDIR/demo.json`: masked-LM accuracy and perplexity per language
   beside the unigram baseline they must beat (`xlm_jax.evaluate.masked_lm_accuracy`), TLM accuracy on the same
   masked tokens with and without the translation in the row, on the directions TLM trained on
   (`tlm_context_accuracy`, `tlm_directions`), a few masked words filled
   in per language, and BLEU of the translation model on the generated test set (detokenized sacreBLEU).
Both checkpoints open with `xlm_jax.load(...)`. Re-running the command resumes where it stopped.
"""
from __future__ import annotations

import json
import time

import numpy as np

from xlm_jax import paths
from xlm_jax.data.mixture import parse_steps
from xlm_jax.train import nmt, pretrain

HELD_OUT = 500        # held-out sentences (and pairs) per measurement
UNIGRAM_TEXT = 5000   # training sentences per language the unigram baseline is counted on


def _mean_over(metrics: dict, prefix: str, suffix: str) -> float:
  values = [v for k, v in metrics.items() if k.startswith(prefix) and k.endswith(suffix)]
  return float(np.mean(values)) if values else float("nan")


def tlm_directions(mlm_steps: str, languages) -> list[tuple[str, str]]:
  """(context, target) language pairs to measure TLM on: each TLM entry 'l1-l2' of `mlm_steps` gives (l1, l2), the
  order its training rows have; without TLM entries, every ordered pair of `languages`."""
  pairs = [s.langs for s in parse_steps(mlm_steps, "mlm") if len(s.langs) == 2]
  return pairs or [(a, b) for a in languages for b in languages if a != b]


def held_out_figures(bundle_dir: str, seed: int = 0) -> dict:
  """The pretrained model's held-out figures (see the module docstring), from its bundle alone."""
  import xlm_jax
  from xlm_jax.evaluate import masked_lm_accuracy, tlm_context_accuracy, unigram_counts
  from xlm_jax.samples import fill_word
  b = xlm_jax.load(bundle_dir)
  tok = b.tokenizer
  out = {"mlm": {}, "tlm": {}, "fill_ins": {}}
  for lang in b.languages:
    counts = unigram_counts(tok, b.held_out(lang, split="train", n=UNIGRAM_TEXT), lang, tok.vocab_size)
    out["mlm"][lang] = masked_lm_accuracy(b, b.held_out(lang, n=HELD_OUT), lang, counts, seed=seed)
    out["fill_ins"][lang] = [f for f in (fill_word(b, text, lang) for text in b.held_out(lang, split="test", n=3))
                             if f is not None]
  length = int(b.config["data"]["bptt"])
  for ctx, lang in tlm_directions(b.config["data"].get("mlm_steps", ""), b.languages):
    pairs = [(tok.encode(c, ctx), tok.encode(t, lang)) for c, t in b.held_out(ctx, lang, n=HELD_OUT)]
    out["tlm"][f"{lang}_given_{ctx}"] = tlm_context_accuracy(
        b.params, b.model_config, pairs, b.lang_id(ctx), b.lang_id(lang), eos_id=tok.eos_id, pad_id=tok.pad_id,
        mask_id=tok.mask_id, length=length, seed=seed)
  mean = lambda table, key: float(np.mean([v[key] for v in table.values()]))
  out["summary"] = {"mlm_acc": mean(out["mlm"], "acc"), "unigram_acc": mean(out["mlm"], "unigram_acc"),
                    "mlm_ppl": mean(out["mlm"], "ppl"), "unigram_ppl": mean(out["mlm"], "unigram_ppl"),
                    "tlm_with_translation_acc": mean(out["tlm"], "with_context_acc"),
                    "tlm_without_translation_acc": mean(out["tlm"], "without_context_acc"),
                    "tlm_pairs_skipped": int(sum(HELD_OUT - v["n_pairs"] for v in out["tlm"].values()))}
  return out


def run(config, workdir: str) -> dict:
  start = time.time()
  pre_dir, nmt_dir = paths.join(workdir, "pretrain"), paths.join(workdir, "nmt")
  pre = config.copy_and_resolve_references()
  with pre.unlocked():
    pre.task = "pretrain"
  metrics = pretrain.run(pre, pre_dir).metrics
  pre_seconds = time.time() - start
  figures = held_out_figures(pre_dir, seed=config.seed)

  mt = config.copy_and_resolve_references()
  with mt.unlocked():
    mt.task = "nmt"
    mt.init.bundle = pre_dir
    mt.train.steps = config.demo.nmt_steps
    mt.train.lr = config.demo.nmt_lr
    mt.train.warmup_steps = config.demo.nmt_warmup_steps
    mt.data.batch_size = config.demo.nmt_batch_size
    mt.nmt.bleu_split = "test"
    mt.log.eval_every = 0
  nmt_metrics = nmt.run(mt, nmt_dir).metrics
  s = figures["summary"]
  lines = [f"demo finished in {time.time() - start:.0f}s (pretraining {pre_seconds:.0f}s); workdir {workdir}",
           f"held-out MLM accuracy {s['mlm_acc']:.3f} vs unigram baseline {s['unigram_acc']:.3f} "
           f"({s['mlm_acc'] / max(s['unigram_acc'], 1e-9):.1f}x); perplexity {s['mlm_ppl']:.2f} vs "
           f"{s['unigram_ppl']:.2f} (mean over languages, {HELD_OUT} sentences each)"]
  for lang, r in figures["mlm"].items():
    lines.append(f"  {lang}: accuracy {r['acc']:.3f} (unigram {r['unigram_acc']:.3f}), perplexity {r['ppl']:.2f} "
                 f"(unigram {r['unigram_ppl']:.2f}), {r['n_masked']} masked tokens")
  lines.append(f"held-out TLM accuracy {s['tlm_with_translation_acc']:.3f} with the translation in the row vs "
               f"{s['tlm_without_translation_acc']:.3f} without (same masked tokens; mean over "
               f"{len(figures['tlm'])} directions; {s['tlm_pairs_skipped']} pairs longer than bptt skipped)")
  for lang, fills in figures["fill_ins"].items():
    for f in fills[:2]:
      lines.append(f"  [{lang}] {f['masked']}  ->  {f['model']} (p={f['p']:.2f}; answer: {f['answer']})")
  lines.append(f"training-time held-out MLM perplexity {_mean_over(metrics, 'mlm_', '/mlm_ppl'):.2f}, accuracy "
               f"{_mean_over(metrics, 'mlm_', '/mlm_acc'):.3f}; TLM accuracy {_mean_over(metrics, 'tlm_', '/tlm_acc'):.3f}"
               " (packed rows, 80/10/10 masking)")
  for key in sorted(k for k in nmt_metrics if k.startswith("bleu_")):
    lines.append(f"held-out BLEU {key[5:]}: {nmt_metrics[key]:.2f} (sacreBLEU, generated test set)")
  lines.append(f"open them with: xlm_jax.load('{pre_dir}'), xlm_jax.load('{nmt_dir}'); "
               f"look at them with: xlm-jax report {workdir}")
  print("\n".join(lines), flush=True)
  numbers = {k: v for k, v in nmt_metrics.items() if not isinstance(v, str)}
  result = {"seconds": time.time() - start, "pretraining_seconds": pre_seconds, **figures,
            "training_eval": {k: v for k, v in metrics.items() if not isinstance(v, str)},
            "bleu": {k[5:]: v for k, v in numbers.items() if k.startswith("bleu_")}}
  paths.write_text(paths.join(workdir, "demo.json"), json.dumps(result, indent=1, ensure_ascii=False))
  return {**metrics, **{f"nmt/{k}": v for k, v in nmt_metrics.items()}}
