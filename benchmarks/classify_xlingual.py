"""Cross-lingual classification and retrieval on real text (issue #10), CPU-sized.

  # zero-shot paraphrase transfer en -> de (Multi30k task 2), MLM-only vs MLM+TLM bundles of the same budget
  python benchmarks/classify_xlingual.py paraphrase --bundles mlm=RUN_MLM,mlm_tlm=RUN_TLM --workdir W \
      --seeds 0,1,2 --out benchmarks/results/classify_paraphrase.json
  # retrieval en<->fr, en<->de on test_2016_flickr, per layer, first-token and mean pooling, same bundles
  python benchmarks/classify_xlingual.py retrieval --bundles mlm=RUN_MLM,mlm_tlm=RUN_TLM \
      --out benchmarks/results/classify_retrieval.json
  # XNLI real files: fine-tune on test.en, select on dev.en, the 15 dev sets; translate-test de/fr with an NMT bundle
  python benchmarks/classify_xlingual.py xnli --bundles mlm_tlm=RUN_TLM --nmt RUN_NMT --workdir W \
      --out benchmarks/results/classify_xnli.json

Each fine-tuning goes through `xlm_jax.train.classify.run` with configs/classify.py (`multi30k_paraphrase`,
`xnli_real`), so the figures are what `main.py --config=configs/classify.py:...` writes in its workdir; the JSON
keeps the per-seed accuracies, mean ± std, the config overrides and the provenance.
"""
from __future__ import annotations

import argparse
import os
import sys

from bench_common import write_json

from xlm_jax.config_base import load_config, override
from xlm_jax.provenance import REPO, provenance


def data_dirs() -> tuple[str, str]:
  """(Multi30k folder, XNLI folder) as configs/classify.py resolves them."""
  from xlm_jax.config_base import load_config_module
  module = load_config_module(os.path.join(REPO, "configs", "classify.py"))
  return module.MULTI30K, module.XNLI


def bundles_arg(text: str) -> dict[str, str]:
  out = {}
  for item in text.split(","):
    name, _, path = item.partition("=")
    out[name.strip()] = path.strip()
  return out


def bundle_recipe(bundle: str) -> dict:
  """How a pretraining bundle was trained, from its config.json: what a reader needs to make it again."""
  import json
  from xlm_jax import paths
  path = paths.join(bundle, "config.json")
  if not paths.exists(path):
    return {}
  c = json.loads(paths.read_text(path))
  data, model, train = c.get("data", {}), c.get("model", {}), c.get("train", {})
  return {"corpus": data.get("corpus"), "languages": data.get("languages"), "mlm_steps": data.get("mlm_steps"),
          "mono_lines": data.get("mono_lines"), "vocab_size": data.get("vocab_size"), "steps": train.get("steps"),
          "lr": train.get("lr"), "batch_size": data.get("batch_size"), "bptt": data.get("bptt"),
          "model": {k: model.get(k) for k in ("emb_dim", "n_layers", "n_heads", "use_lang_emb",
                                               "sinusoidal_embeddings", "dtype")}}


def finetune(variant: str, bundle: str, workdir: str, overrides: dict) -> dict:
  from xlm_jax.train import classify
  c = load_config(os.path.join(REPO, "configs", "classify.py") + ":" + variant)
  c.init.bundle = bundle
  c.log.progress_bar = False
  override(c, overrides)
  results = classify.run(c, workdir)
  return {"config": f"configs/classify.py:{variant}", "overrides": overrides, "bundle": bundle,
          "workdir": workdir, "summary": results["summary"], "select_set": results["select_set"],
          "selected_steps": [r["selected_step"] for r in results["per_seed"]],
          "train_sets": results["train_sets"], "table": open(os.path.join(workdir, "results.md")).read()}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("what", choices=("paraphrase", "retrieval", "xnli"))
  p.add_argument("--bundles", required=True, help="name=workdir,... (pretraining bundles)")
  p.add_argument("--workdir", default="runs/classify_bench")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--steps", type=int, default=0, help="fine-tuning steps (0: the config's)")
  p.add_argument("--nmt", default="", help="xnli: an NMT bundle translating de and fr into en (translate-test)")
  p.add_argument("--n", type=int, default=1000, help="retrieval: sentence pairs per language pair")
  p.add_argument("--out", required=True)
  args = p.parse_args(argv)
  bundles = bundles_arg(args.bundles)
  result = {"what": args.what, "bundles": bundles, **provenance(),
            "bundle_recipes": {name: bundle_recipe(path) for name, path in bundles.items()}}
  common = {"classify.seeds": args.seeds}
  if args.steps:
    common["train.steps"] = args.steps
  if args.what == "paraphrase":
    result["runs"] = {name: finetune("multi30k_paraphrase", path, os.path.join(args.workdir, f"paraphrase_{name}"),
                                     common) for name, path in bundles.items()}
  elif args.what == "retrieval":
    import xlm_jax
    from xlm_jax.retrieval import read_aligned, retrieval
    result["runs"] = {}
    for name, path in bundles.items():
      b = xlm_jax.load(path)
      pairs = {p: read_aligned(data_dirs()[0], "test_2016_flickr", *p, args.n) for p in (("en", "fr"), ("en", "de"))
               if set(p) <= set(b.languages)}  # a bundle of the UNMT halves knows en and fr only
      result["runs"][name] = {"bundle": path, "step": b.meta.get("step"), "split": "test_2016_flickr",
                              "pairs": {pooling: retrieval(b, pairs, pooling) for pooling in ("first", "mean")}}
  else:
    result["runs"] = {}
    for name, path in bundles.items():
      result["runs"][f"zero_shot_{name}"] = finetune("xnli_real", path, os.path.join(args.workdir, f"xnli_{name}"),
                                                     common)
      if args.nmt:
        tt = dict(common, **{"classify.mode": "translate_test", "classify.translate_bundle": args.nmt,
                             "data.eval": f"de+en+fr:{data_dirs()[1]}/dev.{{lang}}.tsv.gz"})
        result["runs"][f"translate_test_{name}"] = finetune("xnli_real", path,
                                                            os.path.join(args.workdir, f"xnli_tt_{name}"), tt)
        result["runs"][f"translate_test_{name}"]["nmt"] = args.nmt
  write_json(args.out, result)
  return 0


if __name__ == "__main__":
  sys.exit(main())
