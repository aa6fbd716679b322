"""Where our MLM train step spends its time: a jax.profiler trace of the issue-13 step, summed per XLA operation.

  python benchmarks/profile_step.py --size b --dtype float32 --out benchmarks/results/profile_step_cpu_avx2_b_f32.json

The step is `train_step.py`'s (same sizes, batches, dropout, Adam). After `--warmup` steps, `--steps` steps run
under `jax.profiler.trace` with a Perfetto trace; every event whose name is an instruction of the compiled step
(XLA:CPU runs one "thunk" per fusion, dot, copy, ...) is summed by that name and joined with the instruction's
result shape and kind from the compiled HLO. The JSON lists the step's wall time, the summed time per operation
family (the name without its `.N` suffix: `dot`, `copy_bitcast_fusion`, `loop_add_fusion`, ...), per family and
result shape (`by_shape`), and the `--top` most expensive instructions with their shapes. Each dot, and each fusion that holds dots, carries its matmul FLOPs
(2 x output elements x contracted size, from the HLO), so a shape's row also gives the rate its dots ran at.

The trap: XLA:CPU runs independent thunks concurrently, so the summed thunk time can exceed the wall time, and a
thunk's duration includes waiting for cores that a concurrent thunk holds. Read the figures as where the cores are
busy, not as a partition of the step. Profiling adds overhead (~5-15% here); `wall_ms_traced` is the traced steps'
own wall time, `wall_ms_untraced` the same steps without the profiler.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import math
import os
import re
import sys
import tempfile
import time

import flax.linen as nn
import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common  # noqa: E402
import train_step as ts  # noqa: E402
from xlm_jax.model import init_params  # noqa: E402

# `  %name = f32[16,128]{1,0} opcode(...)`, or `  name = ...` without the sigil, ROOT included; tuples are skipped
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*([a-z0-9]+\[[^\]]*\])\S*\s+([\w\-]+)\(")


def hlo_instructions(hlo_text: str) -> dict[str, dict]:
  """name -> {shape, opcode, kind} for each instruction of the compiled module's entry and its callees."""
  out = {}
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.match(line)
    if m:
      kind = re.search(r"kind=(k\w+)", line)
      out[m.group(1)] = {"shape": m.group(2), "opcode": m.group(3), "kind": kind.group(1) if kind else None}
  return out


_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")
_DOT = re.compile(r"=\s*[a-z0-9]+\[([\d,]*)\]\S*\s+dot\(%?([\w.\-]+),.*lhs_contracting_dims=\{([\d,]*)\}")
_DIMS = re.compile(r"^[a-z0-9]+\[([\d,]*)\]")


def dot_flops(hlo_text: str, instructions: dict[str, dict]) -> dict[str, float]:
  """name -> matmul FLOPs (2 x output elements x contracted size) of each dot, and of each fusion whose fused
  computation holds dots (`calls=`)."""
  dims = lambda text: [int(d) for d in text.split(",") if d]
  per_computation = collections.Counter()
  out: dict[str, float] = {}
  computation = None
  for line in hlo_text.splitlines():
    c = _COMPUTATION.match(line)
    if c and "=" not in line.split("(")[0]:
      computation = c.group(1)
      continue
    m = _DOT.search(line)
    name = _INSTRUCTION.match(line)
    if m and name and m.group(2) in instructions:
      lhs = dims(_DIMS.match(instructions[m.group(2)]["shape"]).group(1))
      flops = 2.0 * math.prod(dims(m.group(1))) * math.prod(lhs[i] for i in dims(m.group(3)))
      out[name.group(1)] = flops
      per_computation[computation] += flops
  for line in hlo_text.splitlines():
    name, calls = _INSTRUCTION.match(line), re.search(r"calls=%?([\w.\-]+)", line)
    if name and calls and per_computation.get(calls.group(1)):
      out[name.group(1)] = per_computation[calls.group(1)]
  return out


def family(name: str) -> str:
  """`copy_bitcast_fusion.12` -> `copy_bitcast_fusion`; `dot.3` -> `dot`."""
  return re.sub(r"(\.\d+)+$", "", name)


def trace_events(trace_dir: str) -> list[dict]:
  """Complete ('X') events of the Perfetto JSON trace that jax.profiler wrote under `trace_dir`."""
  files = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
  if not files:
    raise SystemExit(f"no perfetto_trace.json.gz under {trace_dir}: jax.profiler wrote no Perfetto trace")
  with gzip.open(max(files, key=os.path.getmtime), "rt") as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  return [e for e in events if e.get("ph") == "X" and "dur" in e]


def summarise(events: list[dict], instructions: dict[str, dict], flops: dict[str, float], steps: int,
              top: int) -> dict:
  per_name = collections.Counter()
  calls = collections.Counter()
  for e in events:
    if e["name"] in instructions:
      per_name[e["name"]] += e["dur"] / 1e3   # us -> ms
      calls[e["name"]] += 1
  per_family = collections.Counter()
  per_shape = collections.Counter()
  count_shape = collections.Counter()
  flops_shape = collections.Counter()
  for name, ms in per_name.items():
    key = (family(name), instructions[name]["shape"])
    per_family[family(name)] += ms
    per_shape[key] += ms
    count_shape[key] += 1
    flops_shape[key] += flops.get(name, 0.0) * calls[name] / steps
  rate = lambda gflop, ms: gflop / ms * 1e3 if gflop and ms else None
  return {
      "traced_instructions": len(per_name),
      "matmul_gflop_per_step": sum(flops.get(n, 0.0) * calls[n] for n in per_name) / steps / 1e9,
      "thunk_ms_per_step": sum(per_name.values()) / steps,
      "families": [{"family": f, "ms_per_step": ms / steps} for f, ms in per_family.most_common()],
      "by_shape": [{"family": f, "shape": sh, "instructions": count_shape[(f, sh)], "ms_per_step": ms / steps,
                    "matmul_gflop_per_step": flops_shape[(f, sh)] / 1e9,
                    "matmul_gflops_per_s": rate(flops_shape[(f, sh)] / 1e9, ms / steps)}
                   for (f, sh), ms in per_shape.most_common(top)],
      "top": [dict(instructions[n], name=n, ms_per_step=ms / steps, calls_per_step=calls[n] / steps)
              for n, ms in per_name.most_common(top)],
  }


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--size", choices=sorted(ts.SIZES), default="b")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--warmup", type=int, default=3, help="steps run before timing and tracing (compile included)")
  p.add_argument("--steps", type=int, default=3, help="steps timed without, then with the profiler")
  p.add_argument("--top", type=int, default=30, help="instructions listed by time")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None, help="JSON result path")
  bench_common.add_host_malloc_flag(p)
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  record = dict(bench_common.provenance(), **bench_common.apply_host_malloc(args.host_malloc))
  cfg = ts.model_config(args.size, args.dtype)
  params = nn.unbox(init_params(ts.model_config(args.size, "float32"), jax.random.key(args.seed)))
  runner = ts.Ours(cfg, params)
  feed = ts.ours_batches(ts.random_batches(args.warmup + 2 * args.steps, args.seed + 1))
  hlo = runner.step.lower(runner.state, feed[0]).compile().as_text()
  instructions = hlo_instructions(hlo)
  flops = dot_flops(hlo, instructions)
  runner.run(feed[:args.warmup])
  t = time.perf_counter()
  runner.run(feed[args.warmup:args.warmup + args.steps])
  untraced = 1000 * (time.perf_counter() - t) / args.steps
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      t = time.perf_counter()
      runner.run(feed[args.warmup + args.steps:])
      traced = 1000 * (time.perf_counter() - t) / args.steps
    events = trace_events(trace_dir)
  summary = summarise(events, instructions, flops, args.steps, args.top)
  result = dict(record, benchmark="profile_step", size=args.size, dtype=args.dtype, model=ts.SIZES[args.size],
                steps=args.steps, wall_ms_untraced=untraced, wall_ms_traced=traced,
                **summary)
  print(f"size {args.size} {args.dtype}: {untraced:.0f} ms/step untraced, {traced:.0f} traced; "
        f"thunks sum to {summary['thunk_ms_per_step']:.0f} ms/step; {summary['matmul_gflop_per_step']:.1f} GFLOP "
        f"of matmuls per step")
  for f in summary["families"][:15]:
    print(f"  {f['ms_per_step']:8.1f} ms  {f['family']}")
  print("by family and result shape:")
  for x in summary["by_shape"][:args.top]:
    gflops = f"  {x['matmul_gflops_per_s']:5.0f} GFLOP/s" if x["matmul_gflops_per_s"] else ""
    print(f"  {x['ms_per_step']:8.1f} ms  {x['instructions']:3d} x {x['family']:28s} {x['shape']:20s}{gflops}")
  print("top instructions:")
  for x in summary["top"][:args.top]:
    print(f"  {x['ms_per_step']:8.1f} ms  {x['name']:40s} {x['opcode']:10s} {x['shape']}")
  if args.out:
    bench_common.write_json(args.out, result)
  return result


if __name__ == "__main__":
  main()
