"""Our MLM train step beside transformers' `XLMWithLMHeadModel`, same weights, same batches, one interleaved run.

  python benchmarks/train_step.py --size c --out benchmarks/results/train_step_cpu_c.json
  python benchmarks/train_step.py --size a --reps 5 --settings ours-bf16   # quick look at one side

Sizes (issue 13): (a) d=256, 4 layers, 4 heads; (b) d=512/6/8; (c) d=1024/6/8; vocabulary 32,000, batch 16x128,
two languages with language ids (even rows language 0, odd rows language 1), 19 predicted positions per row (15%,
80/10/10 mask/random/keep), dropout 0.1 and attention dropout 0.1, Adam lr 1e-4.

What is compared, from the *same initial weights* (ours, converted into transformers with xlm_jax.interop) on the
*same batches and masked positions*:
- `torch-fp32`, `torch-bf16` (autocast): `XLMWithLMHeadModel(input_ids, langs=, labels=)` with labels -100 except
  at the predicted positions, `loss.backward()`, `torch.optim.Adam.step()`; torch uses every core.
- `ours-f32`, `ours-bf16`: our jitted, donated step (`make_train_step` of the training loop) on the batch already
  on the device, the vocabulary projection only at the predicted positions.
Each framework runs in its own process (`bench_common.SideProcess`: its own C heap and thread pools, as when a user
runs either alone; in one process, with `--host-malloc keep`'s single arena, each framework's allocations slowed the
other's steps), under the same `--host-malloc` setting. Settings alternate A B C D per round, one at a time;
`--warmup` rounds are dropped, then `--reps` rounds are timed (each `--steps` steps); we report medians and min/max
in ms per step. The ratio is our faster setting against the faster
transformers setting in this run. MFU = our model FLOPs per second (masked-only projection, `train_flops`) over the
machine's matmul peak: the 2048^3 matmul measured in each round of this run (median over rounds), in our process, in
bf16 (float32-accumulate) and in float32, and the faster of the two taken. On a CPU with AVX-512 BF16 that is the
bf16 peak the issue names; on one without it bf16 is emulated and slower than float32, and an MFU over the emulated
bf16 peak would flatter us (it can pass 100%), so the float32 peak is the denominator there. Both are recorded.

The trap: a ratio is only meaningful inside one run on one machine (CPUs without AVX-512 BF16 emulate bf16 for
both frameworks; separate runs differ by ~7%); run it under `flock -x /tmp/xlm_cpu.lock` on a shared machine.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import types


import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import bench_common  # noqa: E402
from xlm_jax.interop import hf as hf_interop  # noqa: E402
from xlm_jax.interop import parity, weights  # noqa: E402
from xlm_jax.model import Transformer, TransformerConfig, init_params  # noqa: E402
from xlm_jax.model.transformer import forward_flops_per_token, train_flops  # noqa: E402
from xlm_jax.train.flops import measured_peak_flops  # noqa: E402
from xlm_jax.train.loop import make_train_step  # noqa: E402
from xlm_jax.train.pretrain import make_loss  # noqa: E402
from xlm_jax.train.state import TrainState  # noqa: E402

SIZES = {"a": dict(emb_dim=256, n_layers=4, n_heads=4), "b": dict(emb_dim=512, n_layers=6, n_heads=8),
         "c": dict(emb_dim=1024, n_layers=6, n_heads=8)}
TARGETS = {"a": 2.5, "b": 1.8, "c": 1.3}   # issue 13: ours / faster transformers setting
MFU_TARGET_C = 0.60
PEAK_DTYPES = ("bfloat16", "float32")
VOCAB, ROWS, LENGTH, N_PRED = 32000, 16, 128, 19
PAD, EOS, UNK, MASK, N_SPECIAL = 2, 1, 3, 5, 6
LR = 1e-4
SETTINGS = ("torch-fp32", "ours-f32", "torch-bf16", "ours-bf16")
LANGUAGES = ("en", "fr")


def model_config(size: str, dtype: str, dropout: float = 0.1, vocab: int = VOCAB) -> TransformerConfig:
  return TransformerConfig(vocab_size=vocab, n_langs=len(LANGUAGES), pad_id=PAD, dropout=dropout,
                           attention_dropout=dropout, dtype=dtype, **SIZES[size])


def random_batches(n: int, seed: int, vocab: int = VOCAB) -> list[dict]:
  """`n` MLM batches of random tokens as numpy: ours ('mlm' objective dict) and transformers' (input_ids, langs,
  labels) views of the same masked rows."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    tokens = rng.integers(N_SPECIAL, vocab, (ROWS, LENGTH), dtype=np.int32)
    index = np.sort(np.stack([rng.choice(LENGTH, N_PRED, replace=False) for _ in range(ROWS)]), axis=1)
    index = index.astype(np.int32)
    targets = np.take_along_axis(tokens, index, axis=1)
    roll = rng.random(index.shape)
    replaced = np.where(roll < 0.8, MASK, np.where(roll < 0.9, rng.integers(N_SPECIAL, vocab, index.shape), targets))
    inputs = tokens.copy()
    np.put_along_axis(inputs, index, replaced.astype(np.int32), axis=1)
    langs = np.broadcast_to((np.arange(ROWS) % 2)[:, None], (ROWS, LENGTH)).astype(np.int32)
    out.append(mlm_views(inputs, langs, index, targets))
  return out


def mlm_views(inputs, langs, index, targets, positions=None, segment_ids=None) -> dict:
  """Both frameworks' view of one batch of MLM/TLM rows (numpy). `index`/`targets` [B, P] (weight 0 where the
  index is -1: padding of the prediction slots); transformers gets labels -100 everywhere else."""
  rows, length = inputs.shape
  weights_ = (index >= 0).astype(np.float32)
  index = np.maximum(index, 0).astype(np.int32)
  if positions is None:
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length))
  if segment_ids is None:
    segment_ids = (inputs != PAD).astype(np.int32)
  labels = np.full((rows, length), -100, np.int64)
  r, c = np.nonzero(weights_)
  labels[r, index[r, c]] = targets[r, c]
  return {"ours": {"mlm": {"tokens": inputs.astype(np.int32), "positions": np.asarray(positions, np.int32),
                           "langs": np.asarray(langs, np.int32), "segment_ids": np.asarray(segment_ids, np.int32),
                           "pred_index": index, "pred_targets": targets.astype(np.int32),
                           "pred_weights": weights_}},
          "torch": {"input_ids": inputs.astype(np.int64), "langs": np.asarray(langs, np.int64),
                    "position_ids": np.asarray(positions, np.int64),
                    "attention_mask": (inputs != PAD).astype(np.int64), "labels": labels}}


# ------------------------------------------------------------------------------------------------------ ours
def ours_step(cfg: TransformerConfig, params, lr: float = LR):
  """(jitted donated step, fresh state) for our model at `cfg` starting from `params` (float32, unboxed)."""
  tx = optax.adam(lr)
  loss = make_loss(Transformer(cfg), {o: lambda step: jnp.ones((), jnp.float32) for o in ("mlm", "tlm", "clm")})
  step = jax.jit(make_train_step(loss, tx, optax.constant_schedule(lr), 1), donate_argnums=0)
  params = jax.tree.map(jnp.array, params)  # a private copy: the step donates it
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     rng=jax.random.key_data(jax.random.key(1)))
  return step, state


class Ours:
  """One of our settings: `run(batches)` runs one step per batch (device arrays) and waits for the last loss."""

  def __init__(self, cfg: TransformerConfig, params, lr: float = LR):
    self.step, self.state = ours_step(cfg, params, lr)

  def run(self, batches) -> list[float]:
    losses = []
    for b in batches:
      self.state, metrics = self.step(self.state, b)
      losses.append(metrics["loss"])
    return [float(x) for x in jax.device_get(losses)]


# ------------------------------------------------------------------------------------------------ transformers
def torch_model(cfg: TransformerConfig, params):
  """transformers' XLMWithLMHeadModel holding our `params`, through our own converter (xlm_jax.interop)."""
  tok = types.SimpleNamespace(bos_id=0, eos_id=EOS, unk_id=UNK, mask_id=MASK)
  hf_config = hf_interop.hf_config_for(cfg, LANGUAGES, tok)
  model = parity.hf_model_from_state(weights.params_to_state(jax.device_get(params), cfg), hf_config)
  return model.train()


class Torch:
  """transformers' step as a user writes it: forward with labels, backward, Adam, zero_grad."""

  def __init__(self, model, bf16: bool, lr: float = LR):
    import torch
    self.torch = torch
    self.model = model
    self.bf16 = bf16
    self.opt = torch.optim.Adam(model.parameters(), lr=lr)

  def run(self, batches) -> list[float]:
    torch, losses = self.torch, []
    for b in batches:
      with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
        loss = self.model(**b).loss
      loss.backward()
      self.opt.step()
      self.opt.zero_grad(set_to_none=True)
      losses.append(float(loss.detach()))
    return losses


def torch_batches(batches: list[dict]) -> list[dict]:
  import torch
  return [{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in b["torch"].items()} for b in batches]


def ours_batches(batches: list[dict]) -> list[dict]:
  return [jax.tree.map(jnp.asarray, b["ours"]) for b in batches]


def torch_train_flops(cfg: TransformerConfig, rows: int, length: int) -> float:
  """transformers' model FLOPs per step: 3 x forward, the vocabulary projection at every position."""
  return 3.0 * rows * length * (forward_flops_per_token(cfg, length) + 2 * cfg.emb_dim * cfg.vocab_size)


# ------------------------------------------------------------------------------------------------- processes
class OursSide:
  """Our settings in one process: the initial weights, the batches (from `seed`), a jitted step per setting."""

  def __init__(self, size: str, settings: list[str], n_batches: int, seed: int):
    cfg32 = model_config(size, "float32")
    self.params = nn.unbox(init_params(cfg32, jax.random.key(seed)))
    self.runners = {s: Ours(cfg32.replace(dtype="bfloat16" if s.endswith("bf16") else "float32"), self.params)
                    for s in settings}
    self.feed = ours_batches(random_batches(n_batches, seed + 1))

  def initial_params(self):
    return jax.device_get(self.params)

  def peaks(self) -> dict[str, float]:
    """This round's matmul peak in FLOP/s per compute dtype (bf16 with float32 accumulation, and float32)."""
    return {d: measured_peak_flops.__wrapped__(d) for d in PEAK_DTYPES}

  def run(self, setting: str, start: int, steps: int) -> float:
    """ms per step of `steps` steps of `setting` on batches start.. (the losses are fetched, so it waits)."""
    t = time.perf_counter()
    self.runners[setting].run(self.feed[start:start + steps])
    return 1000 * (time.perf_counter() - t) / steps


class TorchSide:
  """transformers' settings in one process, holding our initial weights, on the same batches (same `seed`)."""

  def __init__(self, size: str, settings: list[str], n_batches: int, seed: int, params):
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    cfg32 = model_config(size, "float32")
    self.runners = {s: Torch(torch_model(cfg32, params), bf16=s.endswith("bf16")) for s in settings}
    self.feed = torch_batches(random_batches(n_batches, seed + 1))

  def run(self, setting: str, start: int, steps: int) -> float:
    t = time.perf_counter()
    self.runners[setting].run(self.feed[start:start + steps])
    return 1000 * (time.perf_counter() - t) / steps


def slow_settings(warmup_ms: dict[str, list[float]], factor: float) -> dict[str, str]:
  """The settings whose latest warm-up step took over `factor` times as long as the same framework's other setting
  (checked after each warm-up round; compilation is in round 0 of both of our settings, so it does not decide).

  Such a setting cannot be its framework's faster one, so the ratio does not need it; timing it would cost the
  run most of its time (on a CPU without AVX-512 BF16, transformers' bf16 autocast step ran about 50x slower than
  fp32: minutes per step at size b). {setting: why}; nothing when `factor` <= 0.
  """
  out = {}
  if factor <= 0:
    return out
  for framework in ("ours", "torch"):
    mine = {s: v[-1] for s, v in warmup_ms.items() if s.startswith(framework) and v}
    if len(mine) < 2:
      continue
    fastest = min(mine, key=mine.get)
    for s, ms in mine.items():
      if ms > factor * mine[fastest]:
        out[s] = (f"its warm-up step took {ms:,.0f} ms, {ms / mine[fastest]:.0f}x {fastest}'s {mine[fastest]:,.0f} ms "
                  f"(over --drop-slower {factor:g}x), so it cannot be {framework}'s faster setting on this machine")
  return out


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--size", choices=sorted(SIZES), required=True)
  p.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated subset of {SETTINGS}")
  p.add_argument("--warmup", type=int, default=5,
                 help="untimed rounds: compilation, then the allocator's warm-up (both frameworks' steps slow down "
                      "for a few steps while the heap grows to its working size)")
  p.add_argument("--reps", type=int, default=7, help="timed rounds")
  p.add_argument("--steps", type=int, default=1, help="steps per setting per round")
  p.add_argument("--drop-slower", type=float, default=4.0,
                 help="after each warm-up round, stop timing a setting whose step took over this many times "
                      "its framework's other setting (recorded under 'dropped'); 0 times every setting")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None, help="write the results as JSON here")
  bench_common.add_host_malloc_flag(p)
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  settings = [s.strip() for s in args.settings.split(",") if s.strip()]
  unknown = [s for s in settings if s not in SETTINGS]
  if unknown:
    raise SystemExit(f"unknown setting(s) {unknown}; choose from {SETTINGS}")
  record = dict(bench_common.provenance(), host_malloc=args.host_malloc)
  n_batches = (args.warmup + args.reps) * args.steps
  ours = [s for s in settings if s.startswith("ours")]
  # our side always runs: it holds the initial weights and measures the matmul peak
  ours_side = bench_common.SideProcess(OursSide, args.size, ours, n_batches, args.seed, host_malloc=args.host_malloc)
  record["host_malloc_effect"] = ours_side.host_malloc["host_malloc_effect"]
  theirs = [s for s in settings if s.startswith("torch")]
  torch_side = (bench_common.SideProcess(TorchSide, args.size, theirs, n_batches, args.seed,
                                         ours_side.call("initial_params"), host_malloc=args.host_malloc)
                if theirs else None)
  side = {s: ours_side if s.startswith("ours") else torch_side for s in settings}
  times = {s: [] for s in settings}
  warmup_ms = {s: [] for s in settings}
  dropped: dict[str, dict] = {}
  peaks = []
  for r in range(args.warmup + args.reps):
    peaks.append(ours_side.call("peaks"))
    for s in [s for s in settings if s not in dropped]:
      ms = side[s].call("run", s, r * args.steps, args.steps)
      (times[s] if r >= args.warmup else warmup_ms[s]).append(ms)
      print(f"round {r}{' (warm-up)' if r < args.warmup else ''}: {s} {ms:.0f} ms/step", flush=True)
    if r < args.warmup:
      for s, why in slow_settings({k: v for k, v in warmup_ms.items() if k not in dropped}, args.drop_slower).items():
        dropped[s] = {"warmup_ms": warmup_ms[s], "why": why}
        print(f"dropped {s}: {why}", flush=True)
  settings = [s for s in settings if s not in dropped]
  ours = [s for s in ours if s not in dropped]
  theirs = [s for s in theirs if s not in dropped]
  ours_side.close()
  if torch_side is not None:
    torch_side.close()
  cfg32 = model_config(args.size, "float32")

  n_tokens = ROWS * LENGTH
  ours_flops = train_flops(cfg32, n_tokens, LENGTH, ROWS * N_PRED)
  theirs_flops = torch_train_flops(cfg32, ROWS, LENGTH)
  timed_peaks = peaks[args.warmup:] or peaks
  peak_by_dtype = {d: statistics.median(p[d] for p in timed_peaks) for d in PEAK_DTYPES}
  peak_dtype = max(PEAK_DTYPES, key=peak_by_dtype.get)   # the machine's faster matmul: the honest denominator
  peak = peak_by_dtype[peak_dtype]
  rows = {}
  for s in settings:
    med = statistics.median(times[s])
    flops = ours_flops if s.startswith("ours") else theirs_flops
    rows[s] = {"median_ms": med, "min_ms": min(times[s]), "max_ms": max(times[s]), "samples_ms": times[s],
               "model_gflop_per_step": flops / 1e9, "gflops_per_s": flops / (med / 1e3) / 1e9,
               "mfu": flops / (med / 1e3) / peak}
  result = dict(record, benchmark="train_step", size=args.size, model=dict(SIZES[args.size], vocab=VOCAB),
                batch={"rows": ROWS, "length": LENGTH, "predicted_per_row": N_PRED, "languages": len(LANGUAGES)},
                dropout=0.1, attention_dropout=0.1, optimizer=f"Adam lr {LR}", warmup=args.warmup, reps=args.reps,
                steps_per_rep=args.steps,
                peak_bf16_gflops={"median": peak_by_dtype["bfloat16"] / 1e9,
                                  "samples": [p["bfloat16"] / 1e9 for p in peaks]},
                peak_f32_gflops={"median": peak_by_dtype["float32"] / 1e9,
                                 "samples": [p["float32"] / 1e9 for p in peaks]},
                mfu_peak={"dtype": peak_dtype, "gflops": peak / 1e9},
                settings=rows, dropped=dropped, drop_slower=args.drop_slower, target_ratio=TARGETS[args.size],
                processes="one per framework (bench_common.SideProcess), settings alternating")
  if ours and theirs:
    best_ours = min(ours, key=lambda s: rows[s]["median_ms"])
    best_theirs = min(theirs, key=lambda s: rows[s]["median_ms"])
    ratio = rows[best_theirs]["median_ms"] / rows[best_ours]["median_ms"]
    result["summary"] = {"ours_setting": best_ours, "ours_ms": rows[best_ours]["median_ms"],
                         "torch_setting": best_theirs, "torch_ms": rows[best_theirs]["median_ms"], "ratio": ratio,
                         "mfu": rows[best_ours]["mfu"], "meets_ratio_target": ratio >= TARGETS[args.size]}
    if args.size == "c":
      result["summary"]["mfu_target"] = MFU_TARGET_C
      result["summary"]["meets_mfu_target"] = rows[best_ours]["mfu"] >= MFU_TARGET_C
  print(f"\nsize {args.size}: d={cfg32.emb_dim} L={cfg32.n_layers} H={cfg32.n_heads} V={VOCAB}, batch {ROWS}x{LENGTH}, "
        f"{N_PRED} predictions per row; matmul peak bf16 {peak_by_dtype['bfloat16'] / 1e9:.0f}, float32 "
        f"{peak_by_dtype['float32'] / 1e9:.0f} GFLOP/s (measured in this run; MFU over the {peak_dtype} one)")
  for s in settings:
    x = rows[s]
    print(f"  {s:11s} median {x['median_ms']:7.0f} ms  (min {x['min_ms']:.0f}, max {x['max_ms']:.0f})  "
          f"{x['model_gflop_per_step']:7.1f} GFLOP/step  {x['gflops_per_s']:5.0f} GFLOP/s  MFU {100 * x['mfu']:.0f}%")
  if "summary" in result:
    x = result["summary"]
    print(f"case={args.size} ours_ms={x['ours_ms']:.0f} torch_ms={x['torch_ms']:.0f} torch_setting={x['torch_setting']} "
          f"ratio={x['ratio']:.2f} mfu={x['mfu']:.2f}")
  if args.out:
    bench_common.write_json(args.out, result)
  return result


if __name__ == "__main__":
  main()
