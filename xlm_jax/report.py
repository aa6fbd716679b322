"""`xlm-jax report WORKDIR`: what a run did, as text and PNG plots; `read_metrics`, the metrics reader.

    xlm-jax report runs/demo/pretrain                 # summary on stdout, plots in runs/demo/pretrain/report/
    xlm-jax report runs/demo --out docs/img           # a demo workdir: one section per phase (pretrain, nmt)

The summary holds the config that matters (model, data, schedule), steps done, the final held-out metrics (and
any better earlier ones), throughput and MFU, and the last text samples (translations, fill-ins). Everything is read from
`metrics.jsonl` and `config.json` in the workdir; no checkpoint is opened and no model runs.

The trap: `metrics.jsonl` is appended to across resumes, so a step can appear twice; the later record wins.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from typing import Sequence

import numpy as np

from xlm_jax.errors import UserError


@dataclasses.dataclass
class Metrics:
  """The curves of one run: `train` and `eval` map a metric name to a float array aligned with their `step` key
  (NaN where a record lacks it); `texts` are the text samples (step, tag, text) in order; `start` the last start
  record (task, parameters, devices, ...); `config` the resolved config (config.json), {} when absent."""

  workdir: str
  train: dict[str, np.ndarray]
  eval: dict[str, np.ndarray]
  texts: list[tuple[int, str, str]]
  start: dict
  config: dict

  def last(self, kind: str = "eval") -> dict[str, float]:
    """The newest record's finite values of `kind` ('train' or 'eval')."""
    table = getattr(self, kind)
    if not table or not len(table["step"]):
      return {}
    return {k: float(v[-1]) for k, v in table.items() if k != "step" and np.isfinite(v[-1])}


def _columns(records: list[dict]) -> dict[str, np.ndarray]:
  by_step = {}
  for r in records:  # a resumed run repeats steps: the later record wins
    by_step[r["step"]] = r
  rows = [by_step[s] for s in sorted(by_step)]
  keys = sorted({k for r in rows for k in r if k not in ("kind", "time")})
  return {k: np.array([float(r.get(k, math.nan)) for r in rows]) for k in keys}


def find_runs(path: str) -> list[str]:
  """The run directories under `path`: itself when it holds metrics.jsonl, else its subdirectories that do
  (a demo workdir holds `pretrain/` and `nmt/`)."""
  if os.path.isfile(os.path.join(path, "metrics.jsonl")):
    return [path]
  if not os.path.isdir(path):
    raise UserError(f"{path!r} does not exist.")
  runs = sorted(os.path.join(path, d) for d in os.listdir(path)
                if os.path.isfile(os.path.join(path, d, "metrics.jsonl")))
  if not runs:
    raise UserError(f"{path!r} holds no metrics.jsonl (nor do its subdirectories); is it a training workdir?")
  return runs


def read_metrics(workdir: str) -> Metrics:
  """Read `WORKDIR/metrics.jsonl` (and config.json). A line cut short by a crash is skipped."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    raise UserError(f"{path} does not exist; give a training workdir (runs/demo/pretrain, runs/demo/nmt, ...).")
  groups: dict[str, list[dict]] = {"train": [], "eval": [], "text": [], "start": []}
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      groups.setdefault(record.get("kind", ""), []).append(record)
  config = {}
  if os.path.isfile(os.path.join(workdir, "config.json")):
    with open(os.path.join(workdir, "config.json")) as f:
      config = json.load(f)
  start = {k: v for k, v in (groups["start"][-1] if groups["start"] else {}).items() if k not in ("kind", "time")}
  return Metrics(workdir=workdir, train=_columns(groups["train"]), eval=_columns(groups["eval"]),
                 texts=[(int(r["step"]), r["tag"], r["text"]) for r in groups["text"]], start=start, config=config)


def _headline(name: str) -> bool:
  return name.endswith(("_acc", "_ppl")) or name.startswith(("bleu_", "chrf_"))


def summary(m: Metrics, samples: int = 4) -> str:
  """The text report of one run."""
  c = m.config
  lines = [f"== {m.workdir}"]
  if c:
    model, data, train = c.get("model", {}), c.get("data", {}), c.get("train", {})
    lines.append(f"task {c.get('task')}: {model.get('n_layers')} layers, d={model.get('emb_dim')}, "
                 f"{model.get('n_heads')} heads, {model.get('dtype')}; languages {data.get('languages')}")
    lines.append(f"data: corpus {data.get('corpus')}; mlm_steps {data.get('mlm_steps') or '-'}; "
                 f"batch {data.get('batch_size')} x {data.get('bptt')} tokens")
    lines.append(f"schedule: lr {train.get('lr')} ({train.get('schedule')}, warm-up {train.get('warmup_steps')}), "
                 f"{train.get('steps')} steps")
  if m.start:
    lines.append(f"run: {m.start.get('parameters', 0):,} parameters on {m.start.get('devices')}, mesh "
                 f"{m.start.get('mesh')}")
  steps = m.train.get("step", np.array([]))
  total = m.start.get("steps") or (c.get("train", {}).get("steps") if c else None)
  lines.append(f"steps: {int(steps[-1]) if len(steps) else 0} of {total or '?'} logged")
  if "tokens_per_sec" in m.train:
    tps = m.train["tokens_per_sec"][np.isfinite(m.train["tokens_per_sec"])]
    mfu = m.train.get("mfu", np.array([math.nan]))
    mfu = mfu[np.isfinite(mfu)]
    if len(tps):
      lines.append(f"throughput: {np.median(tps):,.0f} tokens/s (median of {len(tps)} logs)"
                   + (f", MFU {100 * np.median(mfu):.1f}%" if len(mfu) else ""))
  final = {k: v for k, v in m.last("eval").items() if _headline(k)}
  if final:
    lines.append(f"held-out at step {int(m.eval['step'][-1])}:")
    lines.extend(_table(final))
    best = []
    for k in sorted(final):  # only where an earlier evaluation was better than the last
      values = m.eval[k][np.isfinite(m.eval[k])]
      pick = np.min if k.endswith("_ppl") else np.max
      if len(values) > 1 and pick(values) != values[-1]:
        best.append(f"{k}={pick(values):.4g} (step {int(m.eval['step'][np.isfinite(m.eval[k])][values.tolist().index(pick(values))])})")
    if best:
      lines.append("better earlier: " + ", ".join(best))
  shown = m.texts[-samples:]
  if shown:
    lines.append("last samples:")
    for step, tag, text in shown:
      lines.append(f"  [{tag} @ {step}]")
      lines.extend("    " + t for t in text.replace("  \n", "\n").splitlines() if t.strip())
  return "\n".join(lines)


def _table(values: dict[str, float]) -> list[str]:
  """Rows 'set  metric=value ...' grouped by the part before '/' (one row per language or direction)."""
  groups: dict[str, list[str]] = {}
  for k, v in sorted(values.items()):
    group, _, name = k.rpartition("/")
    groups.setdefault(group or "-", []).append(f"{name}={v:.4g}")
  width = max(len(g) for g in groups)
  return [f"  {g:<{width}}  " + "  ".join(items) for g, items in groups.items()]


def plot(m: Metrics, out_dir: str) -> list[str]:
  """PNG plots of the curves into `out_dir`: loss.png (train loss, held-out loss), accuracy.png (per objective
  and language), speed.png (tokens/s and learning rate). Returns the files written."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  os.makedirs(out_dir, exist_ok=True)
  written = []
  name = os.path.basename(os.path.normpath(m.workdir))

  def save(fig, file):
    fig.tight_layout()
    path = os.path.join(out_dir, file)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

  def curves(ax, table, pick, style="-", label_prefix=""):
    drawn = 0
    for k in sorted(table):
      if k != "step" and pick(k):
        ok = np.isfinite(table[k])
        if ok.any():
          ax.plot(table["step"][ok], table[k][ok], style, label=label_prefix + k, markersize=4)
          drawn += 1
    return drawn

  fig, ax = plt.subplots(figsize=(7, 4))
  n = curves(ax, m.train, lambda k: k.endswith("_loss"), "-", "train ")
  n += curves(ax, m.eval, lambda k: k.endswith("_loss"), "o--", "held-out ")
  if n:
    ax.set(xlabel="step", ylabel="cross-entropy (nats)", title=f"{name}: losses")
    ax.legend(fontsize=7, ncol=2)
    save(fig, "loss.png")
  else:
    plt.close(fig)
  fig, ax = plt.subplots(figsize=(7, 4))
  n = curves(ax, m.train, lambda k: k.endswith("_acc"), "-", "train ")
  n += curves(ax, m.eval, lambda k: k.endswith("_acc") or k.startswith("bleu_"), "o--", "held-out ")
  if n:
    ax.set(xlabel="step", ylabel="accuracy (BLEU: /100)" if any(k.startswith("bleu_") for k in m.eval) else
           "accuracy", title=f"{name}: accuracy on masked tokens")
    ax.legend(fontsize=7, ncol=2)
    save(fig, "accuracy.png")
  else:
    plt.close(fig)
  if "tokens_per_sec" in m.train or "lr" in m.train:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    curves(ax, m.train, lambda k: k == "tokens_per_sec")
    ax.set(xlabel="step", ylabel="tokens/s", title=f"{name}: throughput and learning rate")
    ax2 = ax.twinx()
    if "lr" in m.train:
      ax2.plot(m.train["step"], m.train["lr"], "r:", label="lr")
      ax2.set_ylabel("learning rate")
    save(fig, "speed.png")
  return written


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="xlm-jax report", description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("workdir", help="a training workdir (or a demo workdir holding pretrain/ and nmt/)")
  parser.add_argument("--out", default=None, help="folder for the PNGs (default WORKDIR/report; per phase a "
                                                 "subfolder when there are several)")
  parser.add_argument("--no-plots", action="store_true", help="the text summary only (no matplotlib needed)")
  parser.add_argument("--samples", type=int, default=4, help="text samples shown (the newest)")
  args = parser.parse_args(argv)
  try:
    runs = find_runs(args.workdir)
    for run in runs:
      m = read_metrics(run)
      print(summary(m, args.samples))
      if not args.no_plots:
        out = args.out or os.path.join(run, "report")
        if args.out and len(runs) > 1:
          out = os.path.join(args.out, os.path.basename(os.path.normpath(run)))
        for path in plot(m, out):
          print(f"plot: {path}")
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
