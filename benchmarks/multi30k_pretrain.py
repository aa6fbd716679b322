"""Multi30k experiments for MLM + TLM pretraining (issue #4), on real text, CPU-sized.

  python benchmarks/multi30k_pretrain.py --workdir runs/m30k --out benchmarks/results/multi30k.json [--steps N]
  python benchmarks/multi30k_pretrain.py --variant tiny --skip-czech --workdir runs/m30k_tiny \
      --out benchmarks/results/multi30k_tiny_cpu.json        # what configs/multi30k.py:tiny learns on 2 CPU cores

The data folder is configs/multi30k.py's default (../shared/data/multi30k; $XLM_JAX_MULTI30K overrides it).

1. Pretrains `configs/multi30k.py:tiny` (MLM on en, fr, de + TLM on en-fr, fr-en, en-de, de-en).
2. Packing: the share of real (non-pad) tokens in packed en-fr TLM rows at the config's one fixed shape, against
   one pair per row padded to the longest row of a 16-row batch, and padded to the fixed length.
3. The point of TLM: on val en-fr pairs, accuracy on masked French tokens with the English translation in the row
   vs replaced by padding, and the same for masked English with/without French (`xlm_jax.evaluate`).
4. Low resource: Czech masked-LM perplexity on the Czech val set after pretraining on 2,000 Czech sentences alone
   vs the same 2,000 plus en/de/fr monolingual text, same steps and batch, same tokenizer.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from xlm_jax import parallel
from xlm_jax.config_base import load_config
from xlm_jax.data.mixture import row_rng
from xlm_jax.data.rows import PairIndex, TlmRows
from xlm_jax.evaluate import tlm_context_accuracy
from xlm_jax.provenance import REPO, provenance
from xlm_jax.train import pretrain


def get_config(variant: str):
  return load_config(os.path.join(REPO, "configs", "multi30k.py") + ":" + variant)


def packing_stats(context, length: int, group: int, pool: float, n_rows: int = 2000) -> dict:
  para = context["para"][("en", "fr")]
  lang2id = context["lang2id"]
  tok = context["tokenizer"]
  store = PairIndex(para.store("train", 0), para.store("train", 1), length)
  rows = TlmRows(store, swap=False, lang1=lang2id["en"], lang2=lang2id["fr"], length=length, pad_id=tok.pad_id,
                 pool=pool)
  segments = [s for g in range(n_rows // group) for s in rows.rows(row_rng(0, 0, g, 0), group)["segment_ids"]]
  packed = np.mean([np.mean(s > 0) for s in segments])
  per_example = [np.bincount(s[s > 0])[1:] for s in segments]
  packed_mean_len = float(np.mean(np.concatenate(per_example)))
  lengths = para.lengths("train").sum(1) + 4
  lengths = lengths[lengths <= length]
  rng = np.random.default_rng(0)
  batches = [rng.choice(lengths, 16) for _ in range(n_rows // 16)]
  padded_longest = np.mean([b.sum() / (16 * b.max()) for b in batches])
  padded_fixed = float(np.mean(lengths) / length)
  return {"row_length": length, "rows_packed_together": group, "pool": pool, "packed_non_pad": float(packed),
          "mean_pair_tokens_packed": packed_mean_len, "padded_to_longest_of_16": float(padded_longest),
          "padded_to_fixed_length": padded_fixed, "mean_pair_tokens": float(np.mean(lengths)),
          "pairs_too_long_for_a_row": int(store.n_too_long)}


def tlm_effect(workdir: str, context, length: int) -> dict:
  import xlm_jax
  bundle = xlm_jax.load(workdir)
  tok, lang2id = bundle.tokenizer, bundle.lang2id
  pairs = context["para"][("en", "fr")].read_all("valid")
  out = {}
  for name, ctx_lang, tgt_lang, swap in (("fr_given_en", "en", "fr", False), ("en_given_fr", "fr", "en", True)):
    use = [(b, a) if swap else (a, b) for a, b in pairs]
    out[name] = tlm_context_accuracy(bundle.params, bundle.model_config, use, lang2id[ctx_lang], lang2id[tgt_lang],
                                     eos_id=tok.eos_id, pad_id=tok.pad_id, mask_id=tok.mask_id, length=length)
  return out


def czech_runs(root: str, steps: int, tokenizer_from: str, variant: str, only: str = "",
               factor: float | None = None) -> dict:
  results = {}
  for name, langs in (("cs_alone", "cs"), ("cs_plus_en_de_fr", "cs,de,en,fr")):
    if only and name != only:
      continue
    c = get_config(variant)
    if factor is not None:
      c.data.lg_sampling_factor = factor
      name = f"{name}_alpha{factor}"
    c.data.languages = langs
    c.data.mlm_steps = langs
    c.data.mono_lines = "cs:2000"
    c.data.tokenizer = tokenizer_from
    c.train.steps = steps
    c.log.eval_every = 0
    c.log.progress_bar = False
    c.checkpoint.every = steps
    t = time.time()
    metrics = pretrain.run(c, os.path.join(root, name)).metrics
    results[name] = {"cs_val_ppl": metrics["mlm_cs/mlm_ppl"], "cs_val_acc": metrics["mlm_cs/mlm_acc"],
                     "seconds": time.time() - t, "lg_sampling_factor": c.data.lg_sampling_factor, "steps": steps,
                     "workdir": os.path.join(root, name)}
  return results


def shared_tokenizer(root: str, variant: str) -> str:
  """One tokenizer for both Czech runs (trained on 2,000 cs + en/de/fr), so their perplexities compare."""
  from xlm_jax.tokenizer import train_sentencepiece
  from xlm_jax.train.pretrain import line_window
  path = os.path.join(root, "tokenizer_cs_de_en_fr.json")
  if not os.path.exists(path):
    c = get_config(variant)
    corpus = pretrain.make_corpus(c, root, ["cs", "de", "en", "fr"])
    texts = {l: line_window(corpus.mono("train", l), (0, 2000) if l == "cs" else None)
             for l in ("cs", "de", "en", "fr")}
    tok = train_sentencepiece(texts, c.data.vocab_size, alpha=0.5, n_sentences=200000)
    os.makedirs(root, exist_ok=True)
    with open(path, "w") as f:
      json.dump(tok.state(), f)
  return path


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default="runs/m30k")
  parser.add_argument("--variant", default="tiny", help="configs/multi30k.py variant")
  parser.add_argument("--only-czech", default="", help="run only this Czech run (cs_alone / cs_plus_en_de_fr)")
  parser.add_argument("--lg-sampling-factor", type=float, default=None,
                      help="language sampling exponent for the Czech runs (default: the config's, 0.7)")
  parser.add_argument("--steps", type=int, default=None, help="pretraining steps (default: the tiny config's)")
  parser.add_argument("--czech-steps", type=int, default=1500)
  parser.add_argument("--skip-czech", action="store_true")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()

  from xlm_jax.cli import enable_compilation_cache
  enable_compilation_cache("~/.cache/xlm_jax/jit")
  if args.only_czech:
    result = czech_runs(args.workdir, args.czech_steps, shared_tokenizer(args.workdir, args.variant), args.variant,
                        args.only_czech, args.lg_sampling_factor)
    result.update(provenance())
    print(json.dumps(result, indent=1))
    if args.out:
      with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return
  config = get_config(args.variant)
  config.log.progress_bar = False
  if args.steps:
    config.train.steps = args.steps
  pre_dir = os.path.join(args.workdir, "mlm_tlm")
  t = time.time()
  metrics = pretrain.run(config, pre_dir).metrics
  train_seconds = time.time() - t
  mesh = parallel.make_mesh(config.mesh.to_dict())
  _, context = pretrain.build_task(config, pre_dir, mesh)
  result = {"config": f"configs/multi30k.py:{args.variant}", "steps": int(config.train.steps), "seconds": train_seconds,
            "final_eval": metrics, "packing": packing_stats(context, config.data.bptt, config.data.pack_rows,
                                                       config.data.pack_pool),
            "tlm_context": tlm_effect(pre_dir, context, config.data.bptt)}
  result.update(provenance())
  if not args.skip_czech:
    result["czech"] = czech_runs(args.workdir, args.czech_steps, shared_tokenizer(args.workdir, args.variant),
                                 args.variant)
    result["czech"]["steps"] = args.czech_steps
  print(json.dumps(result, indent=1))
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
