"""Unsupervised MT on the Multi30k disjoint halves, end to end (issue 14): MLM pretraining on the halves, word-by-word
pseudo-parallel text from unsupervised word translation of the halves (WORKDIR/word_by_word, written by
benchmarks/unmt_word_translation.py), then denoising + on-the-fly back-translation + MT on that text (weighted down
to 0 by step 3,000) from the pretraining or from scratch, with BLEU every N steps.

  # MLM-initialised (pretrains first into WORKDIR/pretrain unless --bundle names a pretraining):
  python benchmarks/multi30k_unmt.py run --variant tiny --init pretrained --pretrain-steps 6000 --steps 3000 \
      --eval-every 250 --workdir runs/unmt --out benchmarks/results/multi30k_unmt_tiny_pretrained.json
  # from scratch, same shapes and the same BPE (the pretraining's tokenizer):
  python benchmarks/multi30k_unmt.py run --variant tiny --init scratch --tokenizer runs/unmt/pretrain/tokenizer.json \
      --steps 3000 --eval-every 250 --workdir runs/unmt --out benchmarks/results/multi30k_unmt_tiny_scratch.json
  # the supervised reference: the same model and BPE on all of Multi30k's pairs (what model and budget reach at all):
  python benchmarks/multi30k_unmt.py run --variant tiny --init scratch --label supervised_ceiling \
      --tokenizer runs/unmt/pretrain/tokenizer.json --steps 8000 --eval-every 1000 --roundtrip-sentences 0 \
      --workdir runs/unmt --out benchmarks/results/multi30k_unmt_tiny_supervised_ceiling.json \
      --override nmt.ae_steps= nmt.bt_steps= nmt.mt_steps=en-fr,fr-en nmt.unsupervised=False \
      nmt.direction_corpora= nmt.lambda_mt=1
  # denoising + back-translation alone (the recipe before the word-by-word start):
  ... run ... --override nmt.mt_steps= nmt.direction_corpora=
  # the curve (docs/img/multi30k_unmt.png); docs/results.md is then `python benchmarks/report.py`:
  python benchmarks/multi30k_unmt.py render benchmarks/results/multi30k_unmt_tiny_{wbw_pretrained,wbw_scratch,\
wbw_pretrained_mt1,pretrained_sinusoidal,scratch_sinusoidal,mlm_tlm_init,supervised_ceiling}.json

Configs: `configs/multi30k.py:<variant>_halves` (MLM on English lines 0-14,499 and French lines 14,500-28,999 of the
training set, BPE trained on the same halves) and `configs/nmt.py:multi30k_unsup` (the reference's UNMT recipe plus
the word-by-word start; `--frequency-prior` is the word translation's, see unmt_word_translation.py).
At every evaluation the run records detokenized sacreBLEU on test_2016_flickr (en->fr and fr->en, greedy; all 1,000
sentences unless --bleu-sentences), the copy-the-source baseline and how much the output copies its input, and the
unsupervised selection criterion: round-trip BLEU (en->fr->en, fr->en->fr) on disjoint monolingual val lines. The
JSON is rewritten after every evaluation (a run stopped early keeps its curve); re-running the same command resumes
from the newest checkpoint. The data folder is configs/multi30k.py's default ($XLM_JAX_MULTI30K overrides it).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

from bench_common import ROOT, write_json
from xlm_jax.provenance import provenance

CURVE_KEYS = ("bleu_en-fr", "bleu_fr-en", "tokenized_bleu_en-fr", "tokenized_bleu_fr-en", "copy_bleu_en-fr",
              "copy_bleu_fr-en", "source_bleu_en-fr", "source_bleu_fr-en", "roundtrip_bleu_en-fr-en",
              "roundtrip_bleu_fr-en-fr", "roundtrip_bleu")
# with config.nmt.lambda_dis: the language discriminator's accuracy and losses over the last logging window
TRAIN_KEYS = ("dis_acc", "dis_loss", "adv_loss")


def last_train_metrics(metrics_path: str, step: int) -> dict:
  """TRAIN_KEYS of the newest training record at or before `step` in a run's metrics.jsonl (empty without)."""
  last = {}
  if os.path.exists(metrics_path):
    for line in open(metrics_path):
      r = json.loads(line)
      if r.get("kind") == "train" and r.get("step", step + 1) <= step and any(k in r for k in TRAIN_KEYS):
        last = {k: r[k] for k in TRAIN_KEYS if k in r}
  return last


def pretrain_config(args):
  from xlm_jax.config_base import load_config, override
  c = load_config(os.path.join(ROOT, "configs", "multi30k.py") + f":{args.variant}_halves")
  c.train.steps = args.pretrain_steps
  c.log.progress_bar = False
  override(c, dict(args.pretrain_override))
  return c


def unmt_config(args, bundle: str):
  from xlm_jax.config_base import load_config, override
  c = load_config(os.path.join(ROOT, "configs", "nmt.py") + ":multi30k_unsup")
  c.init.encoder = c.init.decoder = args.init
  if args.init == "pretrained":
    c.init.bundle = bundle
  else:  # the pretraining variant's shapes, the same tokenizer
    shapes = pretrain_config(args).model
    for k in ("emb_dim", "n_layers", "n_heads", "sinusoidal_embeddings"):
      c.model[k] = shapes[k]
    c.data.tokenizer = args.tokenizer
  c.train.steps = args.steps
  c.log.eval_every = args.eval_every
  c.checkpoint.every = args.eval_every
  c.log.progress_bar = False
  c.nmt.bleu_split = "test"
  c.nmt.bleu_sentences = args.bleu_sentences
  c.nmt.roundtrip_sentences = args.roundtrip_sentences
  c.nmt.direction_corpora = os.path.join(args.workdir, "word_by_word")
  override(c, dict(args.override))
  return c


def word_by_word_corpora(config, frequency_prior: float) -> dict | None:
  """The recipe's word-by-word start: when `config` trains MT on `nmt.direction_corpora` and that folder lacks a
  direction, write it (benchmarks/unmt_word_translation.py on the halves, no sentence pair read for it) and return
  that script's word-translation figures (None when the run has no such objective)."""
  folder = str(config.nmt.direction_corpora or "")
  directions = [d.strip() for d in str(config.nmt.mt_steps).split(",") if d.strip()]
  if not (config.nmt.unsupervised and folder and directions):
    return None
  summary = folder.rstrip("/") + ".json"
  if not all(os.path.isdir(os.path.join(folder, d)) for d in directions) or not os.path.exists(summary):
    import unmt_word_translation
    unmt_word_translation.main(["--frequency-prior", str(frequency_prior), "--write-pseudo", folder,
                                "--out", summary])
  done = json.load(open(summary))
  return {"folder": folder, "command": done.get("command"), "settings": done.get("settings"),
          "precision": done.get("precision"),
          "word_by_word_bleu": done.get("test_2016_flickr_bleu_lowercased_word_split")}


def tokenizer_stats(tokenizer_path: str, data: str, lines: int = 2000) -> dict:
  """The BPE against the text it cuts: vocabulary size and, on the first `lines` training lines of each half,
  framed tokens per sentence and subword tokens per whitespace word (1.0 = word level)."""
  import gzip
  import numpy as np
  from xlm_jax.tokenizer import tokenizer_from_state
  tok = tokenizer_from_state(json.load(open(tokenizer_path)))
  out = {"vocab_size": tok.vocab_size}
  for lang, first in (("en", 0), ("fr", 14500)):
    with gzip.open(os.path.join(data, f"train.{lang}.gz"), "rt", encoding="utf-8") as f:
      text = [l.rstrip("\n") for i, l in enumerate(f) if first <= i < first + lines]
    framed = np.array([len(tok.encode(t, lang)) for t in text])
    words = sum(len(t.split()) for t in text)
    out[lang] = {"framed_tokens_per_sentence": float(framed.mean()),
                 "tokens_per_word": float((framed - 2).sum() / words)}
  return out


def bundle_state(bundle: str) -> dict:
  """The step the UNMT run starts from (the bundle's newest checkpoint) and the pretraining's last held-out
  evaluation (masked-token accuracy, every masked position held out)."""
  from xlm_jax import checkpoint as ckpt
  steps = ckpt.all_steps(os.path.join(bundle, "checkpoints"))
  last = {}
  metrics = os.path.join(bundle, "metrics.jsonl")
  if os.path.exists(metrics):
    for line in open(metrics):
      r = json.loads(line)
      if r.get("kind") == "eval" and (not steps or r["step"] <= max(steps)):
        last = {k: v for k, v in r.items() if k.endswith("_acc") or k == "step"}
  return {"checkpoint_step": max(steps) if steps else None, "last_eval": last}


def run(args) -> None:
  from xlm_jax import parallel
  from xlm_jax.cli import enable_compilation_cache
  from xlm_jax.train import nmt, pretrain
  from xlm_jax.train.loop import train
  enable_compilation_cache("~/.cache/xlm_jax/jit")
  started = time.time()
  result = {**provenance(), "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_average_start": list(os.getloadavg()), "variant": args.variant, "init": args.init, "label": args.label or args.init, "steps": args.steps,
            "eval_every": args.eval_every, "status": "running", "curve": []}
  bundle = args.bundle
  if args.init == "pretrained":
    if not bundle:
      bundle = os.path.join(args.workdir, "pretrain")
      t = time.time()
      pretrain.run(pretrain_config(args), bundle)
      result["pretrain_seconds"] = time.time() - t
    meta = json.load(open(os.path.join(bundle, "config.json"))) if os.path.exists(
        os.path.join(bundle, "config.json")) else {}
    result["pretraining"] = {"bundle": bundle, "steps": meta.get("train", {}).get("steps"),
                             "mlm_steps": meta.get("data", {}).get("mlm_steps"),
                             "mono_lines": meta.get("data", {}).get("mono_lines"),
                             "model": {k: meta.get("model", {}).get(k) for k in ("emb_dim", "n_layers", "n_heads")},
                             "vocab_size": meta.get("data", {}).get("vocab_size"),
                             "lr": meta.get("train", {}).get("lr"), "batch_size": meta.get("data", {}).get("batch_size"),
                             **bundle_state(bundle)}
  elif not args.tokenizer:
    raise SystemExit("--init scratch needs --tokenizer (the pretraining's tokenizer.json, for the same BPE)")
  config = unmt_config(args, bundle)
  result["word_by_word"] = word_by_word_corpora(config, args.frequency_prior)
  result["config"] = {"unmt": json.loads(json.dumps(config.to_dict(), default=str))}
  result["tokenizer"] = tokenizer_stats(args.tokenizer or os.path.join(bundle, "tokenizer.json"),
                                        config.data.corpus)
  workdir = os.path.join(args.workdir, f"unmt_{args.label or args.init}")
  mesh = parallel.make_mesh(config.mesh.to_dict())
  task, _ = nmt.build_task(config, workdir, mesh)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(metrics_path):  # a resumed run: the evaluations it already made
    for line in open(metrics_path):
      r = json.loads(line)
      if r.get("kind") == "eval" and "bleu_en-fr" in r:
        result["curve"].append({"step": r["step"], **{k: r[k] for k in CURVE_KEYS if k in r},
                                **last_train_metrics(metrics_path, r["step"])})
  inner = task.extra_eval
  t0 = time.time()

  def extra_eval(params, step):
    out = inner(params, step)
    point = {"step": int(step), "seconds": time.time() - t0, **{k: out[k] for k in CURVE_KEYS if k in out},
             **last_train_metrics(metrics_path, int(step))}
    result["curve"] = [p for p in result["curve"] if p["step"] != point["step"]] + [point]
    print("unmt-eval", json.dumps(point), flush=True)
    write_json(args.out, result)
    return out

  train(dataclasses.replace(task, extra_eval=extra_eval), config, workdir, mesh)
  result["status"] = "finished"
  result["seconds"] = time.time() - started
  write_json(args.out, result)


def positions(args) -> None:
  """The halves pretraining with learned against sinusoidal positions (everything else the `<variant>_halves`
  config): held-out masked-token accuracy every --eval-every steps, one run after the other, into one JSON. MLM
  alone has no translation to copy from, and the learned-positions model stays on the unigram plateau."""
  from xlm_jax.cli import enable_compilation_cache
  from xlm_jax.train import pretrain
  enable_compilation_cache("~/.cache/xlm_jax/jit")
  result = {**provenance(), "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "variant": args.variant, "steps": args.pretrain_steps,
            "pretrain_override": {k: v for k, v in args.pretrain_override}, "runs": {}}
  for name, sinusoidal in (("learned", False), ("sinusoidal", True)):
    if name not in args.runs:
      continue
    args_run = argparse.Namespace(**{**vars(args), "pretrain_override": [*args.pretrain_override,
                                                                         ("model.sinusoidal_embeddings", sinusoidal),
                                                                         ("log.eval_every", args.eval_every)]})
    c = pretrain_config(args_run)
    workdir = os.path.join(args.workdir, f"positions_{name}")
    t = time.time()
    pretrain.run(c, workdir)
    curve, times = [], []
    for line in open(os.path.join(workdir, "metrics.jsonl")):
      r = json.loads(line)
      if "time" in r:
        times.append(r["time"])
      if r.get("kind") == "eval":
        curve.append({"step": r["step"], **{k.split("/")[0]: v for k, v in r.items() if k.endswith("_acc")}})
    # the training's wall time from its own log (a run resumed after a stop counts its earlier part, and the pause)
    result["runs"][name] = {"seconds": max(times) - min(times) if len(times) > 1 else time.time() - t, "curve": curve,
                            "config": {"lr": c.train.lr, "warmup_steps": c.train.warmup_steps, "dtype": c.model.dtype,
                                       "batch_size": c.data.batch_size, "bptt": c.data.bptt,
                                       "model": {k: c.model[k] for k in ("emb_dim", "n_layers", "n_heads")}}}
    write_json(args.out, result)
    print(name, json.dumps(curve), flush=True)


def log_fit(curve: list[dict], key: str) -> tuple[float, float] | None:
  """(a, b) of BLEU ~ a + b * ln(step), least squares over the last half of the curve (at least 3 points): the
  projection docs/results.md states and the dashed line of the plot."""
  import numpy as np
  tail = [p for p in curve[len(curve) // 2:] if p["step"] > 0]
  if len(tail) < 3:
    return None
  b, a = np.polyfit(np.log([p["step"] for p in tail]), [p[key] for p in tail], 1)
  return float(a), float(b)


UNMT_TARGET = 20.0  # issue 14: en->fr BLEU of the MLM-initialised model (Lample et al. 2018: 32.8 on this split)


def supervised(run: dict) -> bool:
  """A run trained on parallel pairs (`--override nmt.mt_steps=en-fr,fr-en nmt.ae_steps= nmt.bt_steps=`): a
  diagnostic of what the model and budget reach at all, drawn and reported apart from the unsupervised runs."""
  nmt = run.get("config", {}).get("unmt", {}).get("nmt", {})
  return bool(nmt.get("mt_steps")) and not nmt.get("bt_steps")


def mlm_initialised(d: dict) -> bool:
  """A run seeded from an MLM pretraining on the halves (the runs the target is about): init 'pretrained' and a
  label that says so (`pretrained*`, `wbw_pretrained*`), not the parallel-data diagnostics (e.g. `mlm_tlm_init`)."""
  return d.get("init") == "pretrained" and "pretrained" in d.get("label", d["init"]) and not supervised(d)


def render(paths: list[str], png: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  runs = [json.load(open(p)) for p in paths]
  fig, axes = plt.subplots(1, 3, figsize=(15, 6.4))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  projected = set()
  for n, d in enumerate(runs):  # one colour per run in every panel
    color, label = colors[n % len(colors)], d.get("label", d["init"])
    steps = [p["step"] for p in d["curve"]]
    if supervised(d):  # a reference: the same model trained on parallel pairs, in the BLEU panels only
      for ax, key in zip(axes[:2], ("bleu_en-fr", "bleu_fr-en")):
        ax.plot(steps, [p[key] for p in d["curve"]], marker="^", linestyle="-.", color="black",
                label=f"{label} ({d['variant']}): supervised, all pairs")
      continue
    for ax, key in zip(axes[:2], ("bleu_en-fr", "bleu_fr-en")):
      ax.plot(steps, [p[key] for p in d["curve"]], marker="o", color=color, label=f"{label} ({d['variant']})")
      fit = log_fit(d["curve"], key) if mlm_initialised(d) else None
      if fit:  # the projection: the ln-fit of the last half, drawn to twice the last step
        import numpy as np
        xs = np.linspace(steps[len(steps) // 2], 2 * steps[-1], 50)
        ax.plot(xs, fit[0] + fit[1] * np.log(xs), linestyle="--", color=color, alpha=0.6,
                label=None if key in projected else "ln-fit of the last half (projection)")
        projected.add(key)
    axes[2].plot(steps, [p.get("roundtrip_bleu", float("nan")) for p in d["curve"]], marker="s", linestyle="--",
                 color=color, label=f"round-trip, {label}")
    axes[2].plot(steps, [(p["bleu_en-fr"] + p["bleu_fr-en"]) / 2 for p in d["curve"]], marker="o", color=color,
                 label=f"true BLEU (mean), {label}")
  if any(supervised(d) for d in runs):
    axes[0].axhline(UNMT_TARGET, color="red", linestyle=":", label=f"issue 14 target ({UNMT_TARGET:.0f} BLEU)")
  if runs and runs[0]["curve"]:
    first = runs[0]["curve"][0]
    for ax, key in zip(axes[:2], ("source_bleu_en-fr", "source_bleu_fr-en")):
      if key in first:
        ax.axhline(first[key], color="grey", linestyle=":", label="copy the source")
  for ax, title in zip(axes, ("en->fr (test_2016_flickr)", "fr->en (test_2016_flickr)",
                              "selection: round-trip vs true BLEU")):
    ax.set_title(title)
    ax.set_xlabel("UNMT step")
    ax.set_ylabel("BLEU (detokenized sacreBLEU)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)  # below: the curves stay visible
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
  fig.savefig(png, dpi=110)
  print(f"wrote {png}")


def _pairs(items: list[str]) -> list[tuple[str, object]]:
  """'train.lr=1e-4' -> ('train.lr', 1e-4): Python literals where they parse, strings otherwise."""
  import ast
  out = []
  for item in items:
    key, _, value = item.partition("=")
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass
    out.append((key, value))
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="cmd", required=True)
  r = sub.add_parser("run")
  r.add_argument("--variant", default="tiny", help="configs/multi30k.py size: tiny, small, base")
  r.add_argument("--init", choices=("pretrained", "scratch"), required=True)
  r.add_argument("--bundle", default="", help="an MLM pretraining on the halves (default: pretrain here)")
  r.add_argument("--label", default="", help="the run's name in the JSON, the plot and WORKDIR/unmt_<label> "
                 "(default: --init); e.g. a diagnostic run from another bundle")
  r.add_argument("--tokenizer", default="", help="scratch: the pretraining's tokenizer.json")
  r.add_argument("--pretrain-steps", type=int, default=6000)
  r.add_argument("--steps", type=int, default=3000)
  r.add_argument("--eval-every", type=int, default=250)
  r.add_argument("--bleu-sentences", type=int, default=0, help="0 = all 1,000 test sentences")
  r.add_argument("--roundtrip-sentences", type=int, default=250)
  r.add_argument("--workdir", default="runs/unmt")
  r.add_argument("--out", required=True)
  r.add_argument("--override", nargs="*", default=[], type=str, help="UNMT config fields, e.g. train.lr=1e-4")
  r.add_argument("--pretrain-override", nargs="*", default=[], type=str)
  r.add_argument("--frequency-prior", type=float, default=0.05,
                 help="the word-by-word start's word translation (benchmarks/unmt_word_translation.py)")
  q = sub.add_parser("positions", help="the halves pretraining with learned vs sinusoidal positions")
  q.add_argument("--variant", default="tiny")
  q.add_argument("--pretrain-steps", type=int, default=6000)
  q.add_argument("--eval-every", type=int, default=500)
  q.add_argument("--workdir", default="runs/unmt_positions")
  q.add_argument("--runs", default="learned,sinusoidal", help="which of learned,sinusoidal to run")
  q.add_argument("--pretrain-override", nargs="*", default=[], type=str,
                 help="pretraining config fields, e.g. model.dtype=float32 on a CPU without AVX-512 BF16")
  q.add_argument("--out", required=True)
  g = sub.add_parser("render")
  g.add_argument("results", nargs="+")
  g.add_argument("--png", default=os.path.join(ROOT, "docs", "img", "multi30k_unmt.png"))
  args = parser.parse_args()
  if args.cmd == "render":
    render(args.results, args.png)
    return
  if args.cmd == "positions":
    args.runs = [x.strip() for x in args.runs.split(",") if x.strip()]
    unknown = set(args.runs) - {"learned", "sinusoidal"}
    if unknown:
      raise SystemExit(f"--runs: unknown {sorted(unknown)}; choose from learned, sinusoidal")
    args.pretrain_override = _pairs(args.pretrain_override)
    positions(args)
    return
  args.override, args.pretrain_override = _pairs(args.override), _pairs(args.pretrain_override)
  run(args)


if __name__ == "__main__":
  main()
