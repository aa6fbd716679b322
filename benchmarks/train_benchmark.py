"""Training throughput (tokens/s) and MFU of the pretraining step, at the demo config or a baseline size.

  python benchmarks/train_benchmark.py                      # the demo config (configs/demo.py)
  python benchmarks/train_benchmark.py --size b --steps 10  # baselines.md size (b): d=512, 6 layers, V=32k, 16x128
  python benchmarks/train_benchmark.py --out benchmarks/results/train_demo.json

What is timed: the jitted, donated train step on batches from the real input pipeline (MLM, 15% prediction slots,
vocabulary projection only at those slots), after one warm-up step that compiles. Tokens/s counts real tokens;
MFU = model FLOPs per second / (peak FLOP/s of one device x devices), with the peak measured here on a square
matmul in the model's compute dtype (float32 accumulation), interleaved with the timing runs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time


import jax

from xlm_jax.config_base import load_config
from xlm_jax import parallel
from xlm_jax.train import flops as flops_lib
from xlm_jax.provenance import REPO
from xlm_jax.train import pretrain
from xlm_jax.train.loop import make_train_step
from xlm_jax.train.optim import make_optimizer
from xlm_jax.train.state import sharded_state_layout

SIZES = {  # the baselines.md sizes: rows x length, vocabulary, model
    "a": dict(emb_dim=256, n_layers=4, n_heads=4, vocab=32000, batch=16, length=128),
    "b": dict(emb_dim=512, n_layers=6, n_heads=8, vocab=32000, batch=16, length=128),
    "c": dict(emb_dim=1024, n_layers=6, n_heads=8, vocab=32000, batch=16, length=128),
}


DEMO = f"{REPO}/configs/demo.py:pretrain"

def build(size: str | None, dtype: str, workdir: str):
  config = load_config(DEMO)
  config.model.dtype = dtype
  config.log.progress_bar = False
  if size:
    s = SIZES[size]
    config.model.emb_dim, config.model.n_layers, config.model.n_heads = s["emb_dim"], s["n_layers"], s["n_heads"]
    config.data.vocab_size, config.data.batch_size, config.data.bptt = s["vocab"], s["batch"], s["length"]
    config.data.generated_sizes.n_mono = 60000  # enough text for a 32k BPE vocabulary
    config.data.tokenizer_sentences = 180000
  mesh = parallel.make_mesh(config.mesh.to_dict())
  task, context = pretrain.build_task(config, workdir, mesh)
  return config, mesh, task, context


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", choices=sorted(SIZES), default=None, help="a baselines.md size instead of the demo")
  parser.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: the config's)")
  parser.add_argument("--steps", type=int, default=30, help="timed steps per repetition")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--workdir", default=None, help="where the corpus and prepared data go (default: a temp dir)")
  parser.add_argument("--out", default=None, help="write the results as JSON here")
  args = parser.parse_args()

  workdir = args.workdir or tempfile.mkdtemp(prefix="xlm_jax_bench_")
  dtype = args.dtype or load_config(DEMO).model.dtype
  config, mesh, task, context = build(args.size, dtype, workdir)
  cfg = context["model_config"]
  rules = parallel.rules_from_config(config.mesh.rules)
  tx, schedule = make_optimizer(config.train)
  import flax.linen as nn
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    create, _, shardings = sharded_state_layout(task.init_params, tx, config.seed, mesh, rules)
    state = create()
    step = jax.jit(make_train_step(task.loss, tx, schedule, 1), in_shardings=(shardings, parallel.batch_sharding(mesh)),
                   out_shardings=(shardings, None), donate_argnums=0)
    local = [task.batches.batch(i) for i in range(args.steps)]
    batches = [parallel.global_batch(b, mesh) for b in local]
    flops_per_step = task.step_flops(local[0])
    tokens = [task.step_tokens(b) for b in local]
    t = time.perf_counter()
    state, metrics = step(state, batches[0])
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t
    runs, peaks = [], []
    for _ in range(args.repeats):
      peaks.append(flops_lib.measured_peak_flops.__wrapped__(cfg.dtype))
      t = time.perf_counter()
      for b in batches:
        state, metrics = step(state, b)
      jax.block_until_ready(metrics)
      runs.append(time.perf_counter() - t)
  median = statistics.median(runs)
  peak = statistics.median(peaks) * jax.device_count()
  result = {
      "config": f"size {args.size}" if args.size else "configs/demo.py",
      "model": {"emb_dim": cfg.emb_dim, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "vocab": cfg.vocab_size,
                "dtype": cfg.dtype},
      "batch": {"rows": config.data.batch_size, "length": config.data.bptt,
                "prediction_slots": int(local[0]["mlm"]["pred_index"].shape[1])},
      "step_ms": 1000 * median / args.steps,
      "tokens_per_sec": sum(tokens) / median,
      "model_tflops_per_step": flops_per_step / 1e12,
      "achieved_gflops": flops_per_step * args.steps / median / 1e9,
      "peak_gflops_measured": peak / 1e9,
      "mfu": flops_per_step * args.steps / median / peak,
      "compile_s": compile_s,
      "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
      "machine": f"{platform.machine()}, {os.cpu_count()} cpus, jax {jax.__version__}",
      "command": "python " + " ".join(sys.argv),
  }
  print(f"{result['config']}: d={cfg.emb_dim} L={cfg.n_layers} V={cfg.vocab_size} {cfg.dtype}, batch "
        f"{config.data.batch_size}x{config.data.bptt}")
  print(f"  step {result['step_ms']:.1f} ms   {result['tokens_per_sec']:.0f} tokens/s   "
        f"{result['achieved_gflops']:.1f} GFLOP/s   MFU {100 * result['mfu']:.1f}% "
        f"(peak {result['peak_gflops_measured']:.0f} GFLOP/s measured)   compile {compile_s:.1f} s")
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
