"""Our issue-13 train step with and without one of its speed devices, alternating in one process (an A/B).

  python benchmarks/step_ablation.py --size b --ablate swap_minor_axes --out benchmarks/results/ablation_b_swap_minor_axes.json

Each ablation puts back the plain code a device replaced, only while its step is traced and compiled:
- `swap_minor_axes`: the backward batched products that contract the middle axis of both operands (the
  attention's key and value gradients) as written, which XLA:CPU upcasts to float32 (`layers._grad_einsum`).
`--xla-options '{"xla_cpu_prefer_vector_width": 512}'` instead tests XLA compiler options as the device: the step
compiled with them ("with") against the default compilation ("ablated"), in the same process (the options go to
`compile(compiler_options=...)`, so no second process and no XLA_FLAGS are needed).
Both steps are `train_step.py`'s (same sizes, batches, dropout, Adam, compute dtype `--dtype`), compiled ahead of
the timing; then `--warmup` untimed and `--reps` timed rounds, each round one step of each (order alternating
A B, B A). The JSON gives the medians, min/max and `speedup` = ablated median / with-device median.

The trap: the two steps share the process and the machine; a step-time ratio within one run is what this
measures, and a run-to-run spread of a few percent is normal on a shared VM (run under `flock -x /tmp/xlm_cpu.lock`).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import flax.linen as nn
import jax

import bench_common
import train_step as ts
from xlm_jax.model import init_params
from xlm_jax.model import layers


@contextlib.contextmanager
def _replaced(module, name: str, value):
  old = getattr(module, name)
  setattr(module, name, value)
  try:
    yield
  finally:
    setattr(module, name, old)


ABLATIONS = {
    "swap_minor_axes": lambda: _replaced(layers, "_grad_einsum", layers._einsum_f32),
}


def compiled_runner(size: str, dtype: str, params, batch, ablation: str | None,
                    compiler_options: dict | None = None) -> ts.Ours:
  """train_step.py's runner for `size`/`dtype`, its step traced and compiled now (under `ablation` if given, with
  XLA `compiler_options` if given)."""
  cfg = ts.model_config(size, "float32").replace(dtype=dtype)
  with ABLATIONS[ablation]() if ablation else contextlib.nullcontext():
    runner = ts.Ours(cfg, params)
    runner.step = runner.step.lower(runner.state, batch).compile(compiler_options=compiler_options or None)
  return runner


def xla_options(text: str) -> dict:
  """`--xla-options`: a JSON object of XLA debug options, e.g. '{"xla_cpu_prefer_vector_width": 512}'."""
  try:
    options = json.loads(text)
  except json.JSONDecodeError as e:
    raise argparse.ArgumentTypeError(f"--xla-options must be a JSON object ({e}): {text!r}") from None
  if not isinstance(options, dict) or not options:
    raise argparse.ArgumentTypeError(f"--xla-options must be a non-empty JSON object, got {text!r}")
  return options


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--size", choices=sorted(ts.SIZES), required=True)
  device = p.add_mutually_exclusive_group(required=True)
  device.add_argument("--ablate", choices=sorted(ABLATIONS))
  device.add_argument("--xla-options", type=xla_options, default=None,
                      help="JSON object of XLA compiler options: the step compiled with them against the default")
  p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--reps", type=int, default=15)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None)
  bench_common.add_host_malloc_flag(p)
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  malloc = bench_common.apply_host_malloc(args.host_malloc)  # before XLA starts its threads
  record = dict(bench_common.provenance(), **malloc)
  params = nn.unbox(init_params(ts.model_config(args.size, "float32"), jax.random.key(args.seed)))
  feed = ts.ours_batches(ts.random_batches(args.warmup + args.reps, args.seed + 1))
  runners = {"with": compiled_runner(args.size, args.dtype, params, feed[0], None, args.xla_options),
             "ablated": compiled_runner(args.size, args.dtype, params, feed[0], args.ablate)}
  device = args.ablate or "xla:" + ",".join(f"{k}={v}" for k, v in sorted(args.xla_options.items()))
  times = {name: [] for name in runners}
  for r in range(args.warmup + args.reps):
    order = list(runners) if r % 2 == 0 else list(reversed(runners))
    for name in order:
      t = time.perf_counter()
      runners[name].run([feed[r]])
      ms = 1000 * (time.perf_counter() - t)
      if r >= args.warmup:
        times[name].append(ms)
      print(f"round {r}{' (warm-up)' if r < args.warmup else ''}: {name} {ms:.0f} ms", flush=True)
  rows = {name: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v), "samples_ms": v}
          for name, v in times.items()}
  speedup = rows["ablated"]["median_ms"] / rows["with"]["median_ms"]
  result = dict(record, benchmark="step_ablation", size=args.size, dtype=args.dtype, ablation=device,
                xla_options=args.xla_options,
                model=dict(ts.SIZES[args.size], vocab=ts.VOCAB), warmup=args.warmup, reps=args.reps, settings=rows,
                speedup=speedup)
  print(f"size {args.size} {args.dtype}: with {device} {rows['with']['median_ms']:.0f} ms, without "
        f"{rows['ablated']['median_ms']:.0f} ms (medians of {args.reps}): speedup {speedup:.3f}x")
  if args.out:
    bench_common.write_json(args.out, result)
  return result


if __name__ == "__main__":
  main()
