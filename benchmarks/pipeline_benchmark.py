"""Input-pipeline throughput against the model's consumption rate (issue #8), one `key=value` line per measurement:

  case=<demo|base> impl=<new|old_memory|old_lazy> workers=<n> tokens_per_s=... model_tokens_per_s=... ratio=...

  git worktree add /tmp/xlm_old d92c5a6     # the code before issue #8, for its two paths
  flock -x /tmp/xlm_cpu.lock python benchmarks/pipeline_benchmark.py --old-tree /tmp/xlm_old \
      --out benchmarks/results/pipeline_cpu.json
  # the model's rate on an accelerator host (no corpus needed there), against the CPU pipeline rates:
  python benchmarks/pipeline_benchmark.py --out cpu.json --dump-batches batches/         # here
  python benchmarks/pipeline_benchmark.py --model-from batches/ --pipeline-json cpu.json  # on the GPU host

Configs (their batches exactly as training builds them, via `pretrain.build_task`):
  demo  configs/demo.py:pretrain: the generated corpus; MLM on xa, xb, xc and TLM on the 6 pair directions,
        shared mixing (one 32 x 64 batch per objective per step); d=128, 2 layers, V=1000.
  base  configs/multi30k.py:base: real Multi30k text (en, fr, de; ../shared/data/multi30k, or --multi30k DIR);
        MLM on 3 languages and TLM on 4 directions, 64 x 128 per objective; d=512, 6 layers, V=10000.

What is timed:
  new, workers=0   `Mixture.batch(step)` for consecutive steps in this thread, pinned to one CPU: everything the
                   host does for a step (language sampling, stream rows from the memory-mapped stores, TLM packing,
                   80/10/10 masking): packed, masked MLM+TLM batches.
  new, workers=n   the Grain loader (`data/loader.py`) with n worker processes, this process and its workers
                   confined to n CPUs (`os.sched_setaffinity`, inherited by the spawned workers): batches delivered
                   to the consumer per second, after 5 warm-up batches (worker start-up excluded).
  old_memory/lazy  the code before issue #8 (`--old-tree`: a `git worktree` of that commit), run by its own
                   benchmark script in a subprocess of this run, one core: its in-memory and lazy (per-record
                   ArrayRecord reads) paths.
  model            the jitted, donated train step of the same config on batches from the same pipeline, on all
                   cores, after one compiling step. ratio = tokens_per_s / model_tokens_per_s.
  tokens           real tokens (segment id > 0) of all objectives of a step; rates are medians over repeats.
  workers needed   for the H100 model rates recorded in `--h100`: ceil(H100 model rate / one worker's rate), with
                   this CPU's rate and with it scaled by the H100 host's old in-memory rate over this CPU's (the
                   same code measured on both CPUs: an estimate of the host CPU's speed).
The machine is shared and noisy: run under `flock -x /tmp/xlm_cpu.lock` and compare ratios, not absolute rates.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # numpy's pools, not XLA's
  os.environ.setdefault(_var, "1")

import argparse
import contextlib
import json
import math
import platform
import statistics
import sys
import tempfile
import time


import jax
import numpy as np

from xlm_jax import parallel
from xlm_jax.config_base import load_config
from xlm_jax.data.loader import DEFAULT_STEPS_PER_ELEMENT, Loader
from xlm_jax.data.mixture import Mixture
from xlm_jax.provenance import REPO
from xlm_jax.train import pretrain

CONFIGS = {"demo": ("demo.py", "pretrain"), "base": ("multi30k.py", "base")}
PIPELINE_CORE = 0


def bench_config(name: str, dtype: str | None, multi30k: str | None):
  file, variant = CONFIGS[name]
  config = load_config(os.path.join(REPO, "configs", file) + ":" + variant)
  config.log.progress_bar = False
  if dtype:
    config.model.dtype = dtype
  if name == "base" and multi30k:
    config.data.corpus = multi30k
  return config


@contextlib.contextmanager
def one_core(cpu: int = PIPELINE_CORE):
  """Pin the calling thread (only: pid 0 is the calling thread on Linux) to one CPU, then restore."""
  before = os.sched_getaffinity(0)
  os.sched_setaffinity(0, {cpu})
  try:
    yield
  finally:
    os.sched_setaffinity(0, before)


def step_tokens(batch) -> int:
  return sum(int(np.count_nonzero(b["segment_ids"])) for b in batch.values())


def time_pipeline(batches: Mixture, steps: int, repeats: int, first_step: int = 1000) -> dict:
  """Tokens/s of `batches.batch(step)` on one core: median over `repeats` runs of `steps` consecutive steps."""
  rates, cpu_shares, step_ms = [], [], []
  with one_core():
    batches.batch(first_step - 1)  # warm-up: first-touch of the stores, numpy dispatch caches
    for r in range(repeats):
      start = first_step + r * steps
      wall, cpu = time.perf_counter(), time.thread_time()
      tokens = sum(step_tokens(batches.batch(s)) for s in range(start, start + steps))
      wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
      rates.append(tokens / wall)
      cpu_shares.append(cpu / wall)
      step_ms.append(1000 * wall / steps)
  return {"tokens_per_sec": statistics.median(rates), "step_ms": statistics.median(step_ms),
          "runs_tokens_per_sec": [round(x) for x in rates], "cpu_over_wall": statistics.median(cpu_shares),
          "steps": steps, "repeats": repeats}


def time_model(init_params, loss, local: list, config, mesh, repeats: int) -> dict:
  """Train tokens/s of the jitted, donated step on all devices (the consumption rate the pipeline must beat), on
  the host batches `local` (this process's rows of consecutive steps)."""
  import flax.linen as nn
  from xlm_jax.train.loop import make_train_step
  from xlm_jax.train.optim import make_optimizer
  from xlm_jax.train.state import sharded_state_layout
  rules = parallel.rules_from_config(config.mesh.rules)
  tx, schedule = make_optimizer(config.train)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    create, _, shardings = sharded_state_layout(init_params, tx, config.seed, mesh, rules)
    state = create()
    step = jax.jit(make_train_step(loss, tx, schedule, 1),
                   in_shardings=(shardings, parallel.batch_sharding(mesh)), out_shardings=(shardings, None),
                   donate_argnums=0)
    tokens = sum(step_tokens(b) for b in local)
    batches = [parallel.global_batch(b, mesh) for b in local]
    t = time.perf_counter()
    state, metrics = step(state, batches[0])
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t
    runs = []
    for _ in range(repeats):
      t = time.perf_counter()
      for b in batches:
        state, metrics = step(state, b)
      jax.block_until_ready(metrics)
      runs.append(time.perf_counter() - t)
  median = statistics.median(runs)
  return {"tokens_per_sec": tokens / median, "step_ms": 1000 * median / len(local), "compile_s": compile_s,
          "steps": len(local), "repeats": repeats, "runs_s": runs,
          "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}"}


def time_loader(batches: Mixture, workers: int, steps: int, repeats: int, first_step: int = 1000,
                steps_per_element: int = DEFAULT_STEPS_PER_ELEMENT) -> dict:
  """Tokens/s delivered by the Grain loader with `workers` processes, confined (with this process) to `workers`
  CPUs: median over `repeats` windows of `steps` consecutive steps, after one element of warm-up steps."""
  before = os.sched_getaffinity(0)
  cpus = sorted(before)[:workers]
  os.sched_setaffinity(0, set(cpus))  # the spawned workers inherit it
  try:
    warm = max(5, steps_per_element)
    loader = Loader(batches, first_step, first_step + warm + steps * repeats, workers=workers,
                    steps_per_element=steps_per_element)
    for _ in range(warm):
      next(loader)
    rates = []
    for _ in range(repeats):
      t = time.perf_counter()
      tokens = sum(step_tokens(next(loader)[1]) for _ in range(steps))
      rates.append(tokens / (time.perf_counter() - t))
    loader.close()
  finally:
    os.sched_setaffinity(0, before)
  return {"tokens_per_sec": statistics.median(rates), "runs_tokens_per_sec": [round(x) for x in rates],
          "steps": steps, "repeats": repeats, "cpus": cpus, "steps_per_element": steps_per_element}


def old_paths(tree: str, names: list[str], repeats: int, workdir: str, multi30k: str | None) -> dict:
  """The in-memory and lazy paths of the code before issue #8, by the old tree's own benchmark script (a
  subprocess of this run; its model timing cut to one step: only its pipeline rates are used)."""
  import subprocess
  out = os.path.join(tempfile.mkdtemp(prefix="xlm_old_bench_"), "old.json")
  command = [sys.executable, os.path.join(tree, "benchmarks", "pipeline_benchmark.py"), "--configs", ",".join(names),
             "--model-steps", "1", "--model-repeats", "1", "--repeats", str(repeats), "--out", out,
             "--workdir", os.path.join(workdir, "old"),
             "--multi30k", os.path.abspath(multi30k or load_config("base", None, None).data.corpus)]
  subprocess.run(command, cwd=tree, check=True, env={**os.environ, "PYTHONPATH": tree})
  with open(out) as f:
    results = json.load(f)["results"]
  return {"commit": git_commit(tree), "command": " ".join(command[1:]),
          "results": {n: {"memory": r["pipeline_memory"], "lazy": r["pipeline_lazy"]} for n, r in results.items()}}


def git_commit(tree: str | None = None) -> str:
  import subprocess
  tree = tree or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return subprocess.run(["git", "-C", tree, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def machine() -> str:
  """CPU model, core count and the flags that decide bfloat16 speed."""
  model, flags = platform.processor() or platform.platform(), set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name") and model == (platform.processor() or platform.platform()):
          model = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
          flags = set(line.split(":", 1)[1].split())
  except OSError:
    pass
  shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
  return f"{model}, {os.cpu_count()} cpus, {platform.machine()}, flags: {' '.join(shown) or 'none of avx2/avx512'}"


def bench(name: str, args) -> dict:
  config = bench_config(name, args.dtype, args.multi30k)
  workdir = os.path.join(args.workdir, name)
  mesh = parallel.make_mesh(config.mesh.to_dict())  # starts JAX's thread pool on every core first
  t = time.perf_counter()
  task, context = pretrain.build_task(config, workdir, mesh)
  build_s = time.perf_counter() - t
  cfg = context["model_config"]
  steps = args.pipeline_steps or (200 if name == "demo" else 50)
  new = {"0": time_pipeline(task.batches, steps, args.repeats)}
  for workers in (1, 2):
    new[str(workers)] = time_loader(task.batches, workers, steps, args.repeats)
  model_steps = args.model_steps or (10 if name == "demo" else 2)
  model_repeats = args.model_repeats or (3 if name == "demo" else 1)
  local = [task.batches.batch(i) for i in range(model_steps)]
  if args.dump_batches:
    dump(args.dump_batches, name, local, cfg)
  model = time_model(task.init_params, task.loss, local, config, mesh, model_repeats)
  example = local[0]
  return {
      "config": f"configs/{CONFIGS[name][0]}:{CONFIGS[name][1]}",
      "corpus": config.data.corpus if name == "base" else "generated",
      "steps_spec": {"mlm_steps": config.data.mlm_steps, "clm_steps": config.data.clm_steps,
                     "mixing": config.data.mixing},
      "batch": {k: list(v["tokens"].shape) for k, v in example.items()},
      "tokens_per_step": step_tokens(example),
      "model": {"emb_dim": cfg.emb_dim, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "vocab": cfg.vocab_size,
                "dtype": cfg.dtype},
      "pipeline_new": new, "model_rate": model, "build_s": build_s,
  }


def dump(directory: str, name: str, local: list, cfg) -> None:
  """Save the host batches of the model timing (and the model's data-dependent sizes) for `--model-from`."""
  os.makedirs(directory, exist_ok=True)
  arrays = {f"{i}/{key}/{field}": value for i, batch in enumerate(local) for key, fields in batch.items()
            for field, value in fields.items()}
  np.savez_compressed(os.path.join(directory, f"{name}.npz"), **arrays)
  with open(os.path.join(directory, f"{name}.json"), "w") as f:
    json.dump({"vocab_size": cfg.vocab_size, "n_langs": cfg.n_langs, "pad_id": cfg.pad_id, "steps": len(local)}, f)


def model_from(name: str, args, pipeline: dict | None) -> dict:
  """The model's rate on this machine's devices, on batches saved by `--dump-batches` elsewhere (no corpus, no
  tokenizer, no TFDS needed here: for a GPU or TPU host); ratios against the pipeline rates of `pipeline` (the
  JSON of the run that dumped the batches), which were measured on the machine that ran it."""
  from xlm_jax.model import Transformer, init_params
  from xlm_jax.train.optim import parse_lambda
  config = bench_config(name, args.dtype, None)
  with open(os.path.join(args.model_from, f"{name}.json")) as f:
    sizes = json.load(f)
  with np.load(os.path.join(args.model_from, f"{name}.npz")) as data:
    local = [{} for _ in range(sizes["steps"])]
    for path in data.files:
      i, key, field = path.split("/")
      local[int(i)].setdefault(key, {})[field] = data[path]
  local = (local * 20)[:max(20, len(local))]  # enough steps per timed run on a fast device
  cfg = pretrain.model_config(config, sizes["vocab_size"], sizes["n_langs"], sizes["pad_id"])
  lambdas = {o: parse_lambda(getattr(config.data, f"lambda_{o}"), f"config.data.lambda_{o}") for o in ("mlm", "clm")}
  lambdas["tlm"] = lambdas["mlm"]
  mesh = parallel.make_mesh(config.mesh.to_dict())
  repeats = args.model_repeats or 5
  model = time_model(lambda rng: init_params(cfg, rng), pretrain.make_loss(Transformer(cfg), lambdas), local,
                     config, mesh, repeats)
  result = dict((pipeline or {}).get(name, {}))
  result.update({"model_rate": model, "batch": {k: list(v["tokens"].shape) for k, v in local[0].items()},
                 "model": {"emb_dim": cfg.emb_dim, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
                           "vocab": cfg.vocab_size, "dtype": cfg.dtype}})
  return result


def measurement_lines(results: dict, old: dict | None, h100: dict | None) -> list[str]:
  """The `key=value` lines: every pipeline measurement against the model's rate, the targets' ratios, and the
  workers a 16-core H100 host needs."""
  lines = []
  for name, r in results.items():
    model = r["model_rate"]["tokens_per_sec"]
    rates = {("new", int(w)): m["tokens_per_sec"] for w, m in r.get("pipeline_new", {}).items()}
    for store in ("memory", "lazy"):
      if old and name in old["results"]:
        rates[(f"old_{store}", 1)] = old["results"][name][store]["tokens_per_sec"]
    for (impl, workers), rate in rates.items():
      lines.append(f"case={name} impl={impl} workers={workers} tokens_per_s={rate:.0f} "
                   f"model_tokens_per_s={model:.0f} ratio={rate / model:.2f}")
    one = rates.get(("new", 1))
    if one and ("old_memory", 1) in rates:
      lines.append(f"case={name} target=one_worker_vs_old_memory ratio={one / rates[('old_memory', 1)]:.2f} "
                   "goal=2.0")
      lines.append(f"case={name} target=one_worker_vs_old_lazy ratio={one / rates[('old_lazy', 1)]:.2f} goal=8.0")
    if one and ("new", 2) in rates:
      lines.append(f"case={name} target=two_workers_vs_one ratio={rates[('new', 2)] / one:.2f} goal=1.7")
    if one:
      lines.append(f"case={name} target=one_worker_vs_model ratio={one / model:.2f} goal=10.0")
    if one and h100 and name in h100.get("results", {}):
      gpu = h100["results"][name]["model_rate"]["tokens_per_sec"]
      host_old = h100["results"][name].get("pipeline_memory", {}).get("tokens_per_sec")
      line = (f"case={name} host=h100 model_tokens_per_s={gpu:.0f} per_worker_tokens_per_s={one:.0f} "
              f"workers_needed={math.ceil(gpu / one)}")
      if host_old and ("old_memory", 1) in rates:
        scale = host_old / rates[("old_memory", 1)]
        line += f" host_cpu_speed={scale:.2f} workers_needed_host_cpu={math.ceil(gpu / (one * scale))}"
      lines.append(line + " cores=16 goal=8")
  return lines


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--configs", default="demo,base", help="comma-separated: demo, base")
  parser.add_argument("--dtype", default=None, help="model compute dtype (default: the config's)")
  parser.add_argument("--pipeline-steps", type=int, default=0, help="steps per pipeline run (default 200 / 50)")
  parser.add_argument("--old-tree", default=None, help="a worktree of the commit before issue #8: its paths too")
  parser.add_argument("--h100", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                     "pipeline_h100.json"),
                      help="recorded H100 model rates, for the workers a 16-core GPU host needs")
  parser.add_argument("--repeats", type=int, default=5, help="pipeline runs (the median is reported)")
  parser.add_argument("--model-steps", type=int, default=0, help="timed train steps (default 10 demo / 2 base)")
  parser.add_argument("--model-repeats", type=int, default=0, help="model runs (default 3 demo / 1 base)")
  parser.add_argument("--multi30k", default=None, help="Multi30k folder for base (default: the config's)")
  parser.add_argument("--workdir", default=None, help="corpus, tokenizer and prepared data (default: a temp dir)")
  parser.add_argument("--out", default=None, help="write the results as JSON here")
  parser.add_argument("--dump-batches", default=None, help="also save the model-timing batches in this folder")
  parser.add_argument("--model-from", default=None,
                      help="only time the model, on batches saved by --dump-batches in this folder (for a GPU host)")
  parser.add_argument("--pipeline-json", default=None,
                      help="with --model-from: the --out JSON of the run that dumped them, for the ratios")
  args = parser.parse_args()
  args.workdir = args.workdir or tempfile.mkdtemp(prefix="xlm_jax_pipeline_bench_")
  names = [n.strip() for n in args.configs.split(",") if n.strip()]
  unknown = sorted(set(names) - set(CONFIGS))
  if unknown:
    parser.error(f"unknown config(s) {unknown}; choose from {sorted(CONFIGS)}")
  if args.model_from:
    pipeline = None
    if args.pipeline_json:
      with open(args.pipeline_json) as f:
        pipeline = json.load(f)["results"]
    results = {name: model_from(name, args, pipeline) for name in names}
  else:
    results = {name: bench(name, args) for name in names}
  old = old_paths(args.old_tree, names, args.repeats, args.workdir, args.multi30k) \
      if args.old_tree and not args.model_from else None
  h100 = None
  if args.h100 and os.path.exists(args.h100):
    with open(args.h100) as f:
      h100 = json.load(f)
  lines = measurement_lines(results, old, h100)
  print("\n".join(lines))
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump({"command": "python benchmarks/pipeline_benchmark.py " + " ".join(sys.argv[1:]),
                 "git_commit": git_commit(), "results": results, "old": old, "lines": lines,
                 "machine": machine(), "jax": jax.__version__,
                 "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
                 "load_average": os.getloadavg()}, f, indent=1)


if __name__ == "__main__":
  main()
