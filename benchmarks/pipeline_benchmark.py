"""Input-pipeline throughput on ONE core against the model's consumption rate (issue #4: the pipeline must not be
the bottleneck, >= 10x the model's rate at the demo size).

  python benchmarks/pipeline_benchmark.py                                  # demo and base
  python benchmarks/pipeline_benchmark.py --configs demo --out benchmarks/results/pipeline_demo.json
  python benchmarks/pipeline_benchmark.py --configs base --model-steps 2 --model-repeats 1
  # the model's rate on an accelerator host (no corpus or TFDS needed there), against the CPU pipeline rates:
  python benchmarks/pipeline_benchmark.py --out cpu.json --dump-batches batches/         # here
  python benchmarks/pipeline_benchmark.py --model-from batches/ --pipeline-json cpu.json  # on the GPU host

Configs (their batches exactly as training builds them, via `pretrain.build_task`):
  demo  configs/demo.py:pretrain: the generated corpus; MLM on xa, xb, xc and TLM on the 6 pair directions,
        shared mixing (one 32 x 64 batch per objective per step); d=128, 2 layers, V=1000.
  base  configs/multi30k.py:base: real Multi30k text (en, fr, de; ../shared/data/multi30k, or --multi30k DIR);
        MLM on 3 languages and TLM on 4 directions, 64 x 128 per objective; d=512, 6 layers, V=10000.

What is timed:
  pipeline  `PretrainBatches.batch(step)` for consecutive steps: everything the host does for a step (language
            sampling, stream rows, pair packing, masking, stacking), i.e. the work of the loop's data thread. On
            ONE core: the measuring thread is pinned to CPU 0 (`os.sched_setaffinity`, after JAX has started its
            own thread pool, which keeps every core) and numpy's BLAS/OpenMP pools are limited to one thread (they
            are not used on this path anyway); the thread's CPU time is reported beside the wall time. Two ways
            to hold the data: `memory` (one process: prepared splits in memory) and `lazy` (multi-process runs:
            every record read from its ArrayRecord file on demand).
  model     the jitted, donated train step of the same config on batches from the same pipeline, on all cores
            (as benchmarks/train_benchmark.py), after one compiling step.
  tokens    real tokens (segment id > 0) of all objectives of a step; rates are medians over repeats.
The machine is shared and noisy: prefer medians of several repeats and compare ratios, not absolute rates.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # numpy's pools, not XLA's
  os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from xlm_jax import parallel  # noqa: E402
from xlm_jax.data.pipeline import PretrainBatches  # noqa: E402
from xlm_jax.train import pretrain  # noqa: E402

CONFIGS = {"demo": ("configs.demo", "pretrain"), "base": ("configs.multi30k", "base")}
PIPELINE_CORE = 0


def load_config(name: str, dtype: str | None, multi30k: str | None):
  module, variant = CONFIGS[name]
  config = __import__(module, fromlist=["get_config"]).get_config(variant)
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


def time_pipeline(batches: PretrainBatches, steps: int, repeats: int, first_step: int = 1000) -> dict:
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


def lazy_batches(config, context) -> PretrainBatches:
  """The same batches as the task's, over stores that read every record on demand (multi-process mode)."""
  entries = pretrain.make_entries(context["specs"], "train", mono=context["mono"], para=context["para"],
                                  lang2id=context["lang2id"], bptt=int(config.data.bptt),
                                  tokenizer=context["tokenizer"], pack_pool=config.data.pack_pool, lazy=True)
  return PretrainBatches(entries=entries, batch_size=config.data.batch_size, seq_len=int(config.data.bptt),
                         masking=context["masking"], seed=config.seed, mixing=config.data.mixing,
                         lg_sampling_factor=config.data.lg_sampling_factor, group_rows=config.data.pack_rows)


def bench(name: str, args) -> dict:
  config = load_config(name, args.dtype, args.multi30k)
  workdir = os.path.join(args.workdir, name)
  mesh = parallel.make_mesh(config.mesh.to_dict())  # starts JAX's thread pool on every core first
  t = time.perf_counter()
  task, context = pretrain.build_task(config, workdir, mesh)
  build_s = time.perf_counter() - t
  cfg = context["model_config"]
  steps = args.pipeline_steps or (40 if name == "demo" else 10)
  memory = time_pipeline(task.batches, steps, args.repeats)
  lazy = time_pipeline(lazy_batches(config, context), max(steps // 4, 2), args.repeats)
  model_steps = args.model_steps or (10 if name == "demo" else 2)
  model_repeats = args.model_repeats or (3 if name == "demo" else 1)
  local = [task.batches.batch(i) for i in range(model_steps)]
  if args.dump_batches:
    dump(args.dump_batches, name, local, cfg)
  model = time_model(task.init_params, task.loss, local, config, mesh, model_repeats)
  example = local[0]
  return {
      "config": f"{CONFIGS[name][0].replace('.', '/')}.py:{CONFIGS[name][1]}",
      "corpus": config.data.corpus if name == "base" else "generated",
      "steps_spec": {"mlm_steps": config.data.mlm_steps, "clm_steps": config.data.clm_steps,
                     "mixing": config.data.mixing},
      "batch": {k: list(v["tokens"].shape) for k, v in example.items()},
      "tokens_per_step": step_tokens(example),
      "model": {"emb_dim": cfg.emb_dim, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "vocab": cfg.vocab_size,
                "dtype": cfg.dtype},
      "pipeline_memory": memory, "pipeline_lazy": lazy, "model_rate": model,
      "ratio_memory": memory["tokens_per_sec"] / model["tokens_per_sec"],
      "ratio_lazy": lazy["tokens_per_sec"] / model["tokens_per_sec"],
      "build_s": build_s,
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
  config = load_config(name, args.dtype, None)
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
  for store in ("memory", "lazy"):
    if f"pipeline_{store}" in result:
      result[f"ratio_{store}"] = result[f"pipeline_{store}"]["tokens_per_sec"] / model["tokens_per_sec"]
  return result


def table(results: dict) -> str:
  """One line per config: the pipeline on one core (both stores), the model on all cores, and their ratios."""
  cols = [("config", 7, "<"), ("batch per step", 26, "<"), ("model", 22, "<"), ("pipeline memory", 16, ">"),
          ("pipeline lazy", 14, ">"), ("model", 10, ">"), ("memory/model", 13, ">"), ("lazy/model", 11, ">")]
  lines = ["".join(f"{name:{align}{width}} " for name, width, align in cols),
           "".join(f"{unit:{align}{width}} " for (_, width, align), unit in
                   zip(cols, ["", "", "", "tok/s 1 core", "tok/s 1 core", "tok/s", "", ""]))]
  for name, r in results.items():
    m = r["model"]
    rate = lambda store: f"{r[f'pipeline_{store}']['tokens_per_sec']:,.0f}" if f"pipeline_{store}" in r else "-"
    ratio = lambda store: f"{r[f'ratio_{store}']:,.1f}x" if f"ratio_{store}" in r else "-"
    values = [name, " + ".join(f"{k} {a}x{b}" for k, (a, b) in r["batch"].items()),
              f"d{m['emb_dim']} L{m['n_layers']} V{m['vocab']} {m['dtype']}", rate("memory"), rate("lazy"),
              f"{r['model_rate']['tokens_per_sec']:,.0f}", ratio("memory"), ratio("lazy")]
    lines.append("".join(f"{v:{align}{width}} " for v, (_, width, align) in zip(values, cols)))
  return "\n".join(line.rstrip() for line in lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--configs", default="demo,base", help="comma-separated: demo, base")
  parser.add_argument("--dtype", default=None, help="model compute dtype (default: the config's)")
  parser.add_argument("--pipeline-steps", type=int, default=0, help="steps per pipeline run (default 40 / 10)")
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
  print(table(results))
  for name, r in results.items():
    p, m = r.get("pipeline_memory"), r["model_rate"]
    line = f"{name}: model {m['step_ms']:.1f} ms/step on {m['devices']} (compile {m['compile_s']:.0f} s)"
    if p:
      line += (f"; pipeline {p['step_ms']:.1f} ms/step on one core (thread CPU / wall {p['cpu_over_wall']:.2f}), "
               f"{r['tokens_per_step']} tokens/step")
    print(line)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump({"command": "python benchmarks/pipeline_benchmark.py " + " ".join(sys.argv[1:]),
                 "results": results, "machine": f"{platform.machine()}, {os.cpu_count()} cpus, "
                 f"{platform.processor() or platform.platform()}", "jax": jax.__version__,
                 "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
                 "load_average": os.getloadavg()}, f, indent=1)


if __name__ == "__main__":
  main()
