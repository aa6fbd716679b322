"""docs/scaling.md: the planner's table (compiled here for TPU topologies) and the launchers' --dry-run output.

  /tmp/tpu-venv/bin/python benchmarks/scaling_plan.py        # compute: needs libtpu (requirements-tpu.txt)
  python benchmarks/scaling_plan.py --render                  # re-render docs/scaling.md from the JSON only

Writes benchmarks/results/scaling_plan.json (rows, verdict sentences, dry-run outputs, command, commit, machine,
versions) and renders docs/scaling.md from it; no figure is typed by hand.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT = os.path.join(ROOT, "benchmarks", "results", "scaling_plan.json")
DOC = os.path.join(ROOT, "docs", "scaling.md")
CONFIGS = ("xlm_mlm_tlm_xnli15_1024", "xlm_mlm_100_1280")
TPUS = ("v4-32", "v5e-256")
GPUS = ("32xH100",)  # 4 nodes x 8 GPUs, as the SLURM dry run
TPU_DRY_RUN = (["bash", "launch/tpu_pod.sh", "--dry-run", "run",
                "--config=configs/xlm_paper.py:xlm_mlm_tlm_xnli15_1024", "--workdir=gs://BUCKET/runs/xnli15",
                "--config.data.corpus=gs://BUCKET/data/xnli15"],
               {"TPU_NAME": "xnli15-v4-32", "ZONE": "us-central2-b", "ACCELERATOR": "v4-32"})
SLURM_DRY_RUN = (["bash", "launch/slurm_gpu.sbatch", "--dry-run", "--config=configs/xlm_paper.py:xlm_mlm_100_1280",
                  "--workdir=/shared/runs/xlm100", "--config.data.corpus=/shared/data/xlm100"], {"NODES": "4"})


def machine() -> str:
  model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
  flags = next((l.split(":", 1)[1] for l in open("/proc/cpuinfo") if l.startswith("flags")), "")
  return (f"{model}, {os.cpu_count()} cores, avx512_bf16={'avx512_bf16' in flags.split()}, "
          f"Python {platform.python_version()}")


def dry_run(spec) -> dict:
  args, env = spec
  proc = subprocess.run(args, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
  return {"command": " ".join(f"{k}={v}" for k, v in env.items()) + " " + " ".join(args[1:]),
          "output": proc.stdout, "returncode": proc.returncode}


def compute(presets, out: str, resume: bool = False) -> dict:
  """Plan every (config, topology, preset), the most informative rows first; the JSON is rewritten after each row,
  so an interrupted run still renders the rows it has."""
  import jax
  from importlib import metadata
  from xlm_jax.config_base import load_config_module
  get_config = load_config_module(os.path.join(ROOT, "configs", "xlm_paper.py")).get_config
  from xlm_jax import plan as plan_lib
  commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
  data = {"command": "python " + " ".join(sys.argv), "commit": commit, "machine": machine(), "jax": jax.__version__,
          "libtpu": metadata.version("libtpu"), "rows": [], "tpu_dry_run": dry_run(TPU_DRY_RUN),
          "slurm_dry_run": dry_run(SLURM_DRY_RUN)}
  if resume and os.path.exists(out):  # keep the rows of an earlier run (their commits are listed), plan the rest
    with open(out) as f:
      earlier = json.load(f)
    data["rows"] = earlier["rows"]
    data["earlier_commits"] = sorted(set(earlier.get("earlier_commits", []) + [earlier["commit"]]))
  done = {(r["config"], r["topology"], r["preset"]) for r in data["rows"]}
  order = [(p, t, c) for p in presets for t in GPUS + TPUS for c in CONFIGS]
  for preset, topo, name in order:
    if (name, topo, preset) in done:
      continue
    t0 = time.perf_counter()
    row = plan_lib.plan(get_config(name), plan_lib.parse_target(topo), preset)
    row.update(config=name, seconds=round(time.perf_counter() - t0, 1))
    print(plan_lib.format_table([row]).splitlines()[-1], flush=True)
    data["rows"].append(row)
    with open(out, "w") as f:
      json.dump(data, f, indent=1)
  return data


def sentences(rows: list[dict]) -> list[str]:
  """One verdict sentence per row; a row that does not fit names the first fitting preset/remat of its
  config and topology (fsdp, fsdp_tp, dp; remat none first) among the rows computed."""
  from xlm_jax.plan import PRESET_ORDER, REMATS, verdict_sentence
  out = []
  for row in rows:
    fix = ""
    if row["verdict"] != "fits":
      same = [r for r in rows if r["config"] == row["config"] and r["topology"] == row["topology"]
              and r["verdict"] == "fits"]
      same.sort(key=lambda r: (PRESET_ORDER.index(r["preset"]), REMATS.index(r["remat"])))
      if same:
        fix = f"config.mesh.preset={same[0]['preset']} with config.model.remat={same[0]['remat']}"
    out.append(verdict_sentence(row, fix))
  return out


def render(data: dict) -> str:
  from xlm_jax.plan import format_table
  tpu = [r for r in data["rows"] if not r["estimate"]]
  gpu = [r for r in data["rows"] if r["estimate"]]
  lines = ["# Scaling: will it fit, and how to launch it", "",
           "Rendered by `benchmarks/scaling_plan.py` from `benchmarks/results/scaling_plan.json`; do not edit by hand.",
           "", f"Command: `{data['command']}` at commit `{data['commit'][:10]}`"
           + (f" (earlier rows: commit {', '.join(c[:10] for c in data['earlier_commits'])})"
              if data.get("earlier_commits") else "") + f", jax {data['jax']}, libtpu {data['libtpu']}.", f"Machine: {data['machine']} (no TPU, no GPU).", "",
           "## Per-device memory of one training step (`python -m xlm_jax.plan`)", "",
           "TPU rows: the real pretraining step (model, masked-LM loss, AdamW, gradient clipping, donated state) "
           "compiled on this machine for the topology with `jax.experimental.topologies` and libtpu; bytes from the "
           "compiled step's memory analysis. `params`, `opt state` and `batch` are the argument bytes one device "
           "holds (from the shardings), `temporaries` the activations and workspace XLA allocates, "
           "`outputs-aliased` the outputs not written into donated inputs; `total` adds the generated code; `rows/shard` is "
           "the batch rows per data x fsdp shard (the `tensor` devices of a shard share its rows). HBM is "
           "the vendor's per-chip figure. The paper configs use their defaults: global batch 512 rows of 256 "
           "tokens, bfloat16 matmuls, float32 weights and Adam moments, scanned layers.", "",
           format_table(tpu), "",
           "GPU rows are an **estimate** (compiling for a GPU needs CUDA): parameter, optimizer and batch bytes from "
           "`jax.eval_shape` and the shardings, gradients as large as the parameters, activations from the formula "
           "in `xlm_jax.plan.activation_estimate` (Korthikanti et al. 2022); 32 H100 = the 4 nodes x 8 GPUs of the "
           "SLURM example below.", "", format_table(gpu), "", "Verdicts, one sentence each:", ""]
  lines += [f"- {s}" for s in sentences(data["rows"])]
  done = {(r["config"], r["topology"], r["preset"]) for r in data["rows"]}
  missing = [f"{c} on {t} with {p}" for p in ("fsdp", "fsdp_tp", "dp") for t in GPUS + TPUS for c in CONFIGS
             if (c, t, p) not in done]
  seconds = [r["seconds"] for r in tpu if "seconds" in r]
  if seconds:
    lines += ["", f"Each TPU compile (or the compiler's out-of-memory refusal) took {min(seconds):.0f}-{max(seconds):.0f} s of wall time here (2 shared cores)."]
  if missing:
    lines += ["", f"**Not computed** (the run was stopped before reaching them; `benchmarks/scaling_plan.py` computes "
              f"them in this order): {'; '.join(missing)}."]
  for key, title in (("tpu_dry_run", "`launch/tpu_pod.sh --dry-run` for a v4-32"),
                     ("slurm_dry_run", "`launch/slurm_gpu.sbatch --dry-run` for 4 nodes x 8 GPUs")):
    d = data[key]
    lines += ["", f"## {title}", "", f"`{d['command'].strip()}`", "", "```", d["output"].rstrip(), "```"]
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--render", action="store_true", help="only re-render docs/scaling.md from the JSON")
  parser.add_argument("--presets", default="fsdp,fsdp_tp,dp")
  parser.add_argument("--resume", action="store_true", help="keep the rows already in the JSON, plan the rest")
  args = parser.parse_args()
  if not args.render:
    os.makedirs(os.path.dirname(RESULT), exist_ok=True)
    compute(args.presets.split(","), RESULT, args.resume)
  with open(RESULT) as f:
    data = json.load(f)
  os.makedirs(os.path.dirname(DOC), exist_ok=True)
  with open(DOC, "w") as f:
    f.write(render(data))
  print(f"wrote {DOC}")


if __name__ == "__main__":
  main()
