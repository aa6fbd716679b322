"""Wall time for one budget of MLM+TLM target tokens on Multi30k en-fr: ours (packed) against transformers (padded).

  python benchmarks/epoch.py --out benchmarks/results/epoch_cpu.json          # ~7 minutes on 2 cores
  python benchmarks/epoch.py --budget 20000 --variant tiny                    # quicker look

Both sides train the same model (configs/multi30k.py:<variant> restricted to en, fr; MLM on en and fr + TLM on
en-fr; dropout 0.1) from the same initial weights (ours converted with xlm_jax.interop), on the same tokenizer,
until each has trained on `--budget` predicted (target) tokens; 15% of real tokens are predicted on both sides.
- ours: the project's own pipeline and step, as `main.py` runs them: `pretrain.build_task` rows (MLM streams of
  `bptt` tokens, TLM pairs packed first-fit-decreasing into fixed rows, one update per step with both objectives),
  the jitted donated step, one compilation, in the faster of bfloat16 / float32 matmuls on this machine (a short
  probe of both decides, as on transformers' side; `--ours-dtype` fixes it; on a CPU without AVX-512 BF16, bf16 is
  emulated and float32 usually wins).
- transformers: batches as a user builds them for `XLMWithLMHeadModel`: one sentence (MLM) or one framed pair
  `</s> en </s></s> fr </s>` with positions restarting and per-token language ids (TLM) per row, rows in random
  order, padded to the longest row of the batch; objectives take turns (en, fr, en-fr), one update per batch,
  Adam; the faster of fp32 / bf16 autocast on this machine (a short probe of both decides). Rows per batch are set
  so that a batch holds about as many real tokens as one objective of one of our steps (`--torch-rows` fixes it
  instead); random batches of many rows padded to their longest row are mostly padding, which is the point.
The budget is spent in two alternating halves (ours, transformers, ours, transformers) so machine noise hits both;
each framework runs in its own process (`bench_common.SideProcess`: its own C heap and thread pools, as when run
alone), under the same `--host-malloc` setting.
Timed: building the batches from token ids (tokenising is done beforehand for both) plus the steps; our
compilation is reported separately and not timed (it happens once per run, whatever its length).
"""
from __future__ import annotations

import argparse
import copy
import gzip
import os
import time


import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

import bench_common  # noqa: E402
import train_step  # noqa: E402
from xlm_jax.config_base import load_config_module  # noqa: E402
from xlm_jax import parallel  # noqa: E402
from xlm_jax.model import init_params  # noqa: E402
from xlm_jax.tokenizer import frame  # noqa: E402
from xlm_jax.train import pretrain  # noqa: E402

# config files are loaded by path (the repository root need not be on sys.path)
get_config = load_config_module(os.path.join(bench_common.ROOT, "configs", "multi30k.py")).get_config

TARGET = 3.0  # issue 13: ours >= 3x transformers on the same token budget
LANGS = ("en", "fr")


def build_ours(variant: str, workdir: str, dropout: float = 0.1):
  """(task, context) of configs/multi30k.py:<variant> restricted to en-fr MLM + TLM."""
  config = get_config(variant)
  config.data.languages = ",".join(LANGS)
  config.data.mlm_steps = "en,fr,en-fr"
  config.model.dropout = dropout
  config.model.attention_dropout = dropout
  mesh = parallel.make_mesh(config.mesh.to_dict())
  task, context = pretrain.build_task(config, workdir, mesh)
  return config, task, context


def read_pairs(data_dir: str, limit: int | None = None) -> list[tuple[str, str]]:
  with gzip.open(os.path.join(data_dir, "train.en.gz"), "rt", encoding="utf-8") as f_en, \
       gzip.open(os.path.join(data_dir, "train.fr.gz"), "rt", encoding="utf-8") as f_fr:
    pairs = [(a.strip(), b.strip()) for a, b in zip(f_en, f_fr)]
  return pairs[:limit] if limit else pairs


class PaddedRows:
  """transformers-style rows: MLM on en, MLM on fr, TLM on en-fr; each a framed example padded per batch."""

  def __init__(self, pairs, tokenizer, lang2id, max_len: int, seed: int):
    self.tok, self.rng = tokenizer, np.random.default_rng(seed)
    en = [frame(tokenizer.encode(a, "en"), tokenizer.eos_id) for a, _ in pairs]
    fr = [frame(tokenizer.encode(b, "fr"), tokenizer.eos_id) for _, b in pairs]
    ids = lambda rows: [np.asarray(r, np.int32) for r in rows]
    self.streams = {
        "en": [(r, np.zeros(len(r), np.int32) + lang2id["en"], np.arange(len(r), dtype=np.int32)) for r in ids(en)],
        "fr": [(r, np.zeros(len(r), np.int32) + lang2id["fr"], np.arange(len(r), dtype=np.int32)) for r in ids(fr)],
        "en-fr": [(np.concatenate([a, b]),
                   np.concatenate([np.full(len(a), lang2id["en"], np.int32), np.full(len(b), lang2id["fr"], np.int32)]),
                   np.concatenate([np.arange(len(a)), np.arange(len(b))]).astype(np.int32))
                  for a, b in zip(ids(en), ids(fr)) if len(a) + len(b) <= max_len]}
    self.order = {k: self.rng.permutation(len(v)) for k, v in self.streams.items()}
    self.cursor = {k: 0 for k in self.streams}

  def mean_length(self, name: str) -> float:
    return float(np.mean([len(r[0]) for r in self.streams[name]]))

  def batch(self, name: str, rows: int, masking) -> dict:
    """The next `rows` examples of stream `name` padded to the longest, 15% of real tokens masked 80/10/10."""
    pick = []
    for _ in range(rows):
      if self.cursor[name] == len(self.order[name]):
        self.order[name], self.cursor[name] = self.rng.permutation(len(self.order[name])), 0
      pick.append(self.streams[name][self.order[name][self.cursor[name]]])
      self.cursor[name] += 1
    length = max(len(p[0]) for p in pick)
    pad = self.tok.pad_id
    tokens = np.full((rows, length), pad, np.int32)
    langs = np.zeros((rows, length), np.int32)
    positions = np.zeros((rows, length), np.int32)
    for i, (t, l, p) in enumerate(pick):
      tokens[i, :len(t)], langs[i, :len(t)], positions[i, :len(t)] = t, l, p
    real = tokens != pad
    chosen = real & (self.rng.random(tokens.shape) < masking.word_pred)
    n_pred = max(int(chosen.sum(1).max()), 1)
    index = np.full((rows, n_pred), -1, np.int32)
    for i in range(rows):
      where = np.flatnonzero(chosen[i])
      index[i, :len(where)] = where
    targets = np.where(index >= 0, np.take_along_axis(tokens, np.maximum(index, 0), axis=1), 0)
    roll = self.rng.random(index.shape)
    keep_p, rand_p = masking.mask_keep_rand[1], masking.mask_keep_rand[2]
    random_ids = self.rng.integers(pretrain.N_SPECIAL, masking.vocab_size, index.shape)
    replaced = np.where(roll < 1 - keep_p - rand_p, masking.mask_id, np.where(roll < 1 - rand_p, targets, random_ids))
    inputs = tokens.copy()
    r, c = np.nonzero(index >= 0)
    inputs[r, index[r, c]] = replaced[r, c]
    return train_step.mlm_views(inputs, langs, index, targets, positions=positions, segment_ids=real.astype(np.int32))


def targets_of(batch: dict) -> int:
  return int(sum(np.sum(np.asarray(b["pred_weights"])) for b in batch.values()))


def run_ours(step, state, task, first_step: int, budget: int):
  """Steps from `first_step` until `budget` targets are trained; returns (state, next step, targets, seconds)."""
  done, s, losses = 0, first_step, []
  t = time.perf_counter()
  while done < budget:
    local = task.batches.batch(s)
    done += targets_of(local)
    state, metrics = step(state, jax.tree.map(jax.numpy.asarray, local))
    losses.append(metrics["loss"])
    s += 1
  jax.block_until_ready(losses)
  return state, s, done, time.perf_counter() - t


def run_torch(runner, rows: PaddedRows, rows_per_batch: dict, masking, budget: int, turn: int):
  done, n = 0, 0
  import torch
  t = time.perf_counter()
  while done < budget:
    name = ("en", "fr", "en-fr")[turn % 3]
    b = rows.batch(name, rows_per_batch[name], masking)
    done += int((b["torch"]["labels"] != -100).sum())
    runner.run([{k: torch.from_numpy(v) for k, v in b["torch"].items()}])
    turn, n = turn + 1, n + 1
  return turn, done, n, time.perf_counter() - t


class OursSide:
  """Our side, in its own process: the config's task and jitted donated step, compiled on construction."""

  def __init__(self, variant: str, workdir: str, seed: int, dtype: str = "auto"):
    import jax.numpy as jnp
    config, task, context = build_ours(variant, workdir)
    cfg = context["model_config"]
    params = nn.unbox(init_params(cfg.replace(dtype="float32"), jax.random.key(seed)))
    self.params_f32 = jax.device_get(params)
    self.probe = {}
    if dtype == "auto":  # as transformers' side does: the faster compute dtype on this machine, by a short probe
      for candidate in ("bfloat16", "float32"):
        step_fn, state = train_step.ours_step(cfg.replace(dtype=candidate), params, lr=config.train.lr)
        state, after, _, _ = run_ours(step_fn, state, task, 0, 1)  # compilation and the first step, untimed
        self.probe[candidate] = run_ours(step_fn, state, task, after, 3 * 300)[3]
        del step_fn, state
      dtype = min(self.probe, key=self.probe.get)
    cfg = cfg.replace(dtype=dtype)
    self.task, self.step_fn, self.state = task, *train_step.ours_step(cfg, params, lr=config.train.lr)
    t = time.perf_counter()
    first = task.batches.batch(0)
    self.state, metrics = self.step_fn(self.state, jax.tree.map(jnp.asarray, first))
    jax.block_until_ready(metrics)
    real = sum(int(np.sum(b["segment_ids"] > 0)) for b in first.values())
    slots = sum(int(np.prod(b["segment_ids"].shape)) for b in first.values())
    self.info = {"compile_s": time.perf_counter() - t, "real_tokens": real, "slots": slots,
                 "objectives": sorted(first), "batch_rows": config.data.batch_size, "row_length": config.data.bptt,
                 "dtype_probe_seconds": self.probe,
                 "model": {"emb_dim": cfg.emb_dim, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
                           "vocab": cfg.vocab_size, "dtype": cfg.dtype, "dropout": cfg.dropout}}
    self.next_step = 1

  def describe(self) -> dict:
    return self.info

  def initial_params(self):
    return self.params_f32

  def run(self, budget: int) -> tuple[int, int, float]:
    """Steps until `budget` more targets are trained: (targets, steps, seconds)."""
    first = self.next_step
    self.state, self.next_step, done, seconds = run_ours(self.step_fn, self.state, self.task, first, budget)
    return done, self.next_step - first, seconds


class TorchSide:
  """transformers' side, in its own process: padded batches as a user builds them, the faster of fp32 / bf16."""

  def __init__(self, variant: str, workdir: str, seed: int, params, real_per_objective: float, torch_rows: int):
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    config, _, context = build_ours(variant, workdir)  # the same tokenizer and prepared data (reused)
    cfg, self.masking = context["model_config"], context["masking"]
    self.rows = PaddedRows(read_pairs(config.data.corpus), context["tokenizer"], context["lang2id"],
                           config.data.bptt, seed)
    # one of our steps holds `real_per_objective` real tokens per objective; a batch of one objective gets as many
    self.rows_per_batch = {k: torch_rows or max(1, round(real_per_objective / self.rows.mean_length(k)))
                           for k in self.rows.streams}
    model = train_step.torch_model(cfg.replace(dtype="float32"), params)
    self.probe = {}
    for bf16 in (False, True):
      runner = train_step.Torch(copy.deepcopy(model), bf16=bf16, lr=config.train.lr)
      run_torch(runner, self.rows, self.rows_per_batch, self.masking, 1, 0)  # warm-up
      self.probe["torch-bf16" if bf16 else "torch-fp32"] = run_torch(
          runner, self.rows, self.rows_per_batch, self.masking, 3 * 300, 0)[3]
    self.setting = min(self.probe, key=self.probe.get)
    self.runner = train_step.Torch(model, bf16=self.setting.endswith("bf16"), lr=config.train.lr)
    run_torch(self.runner, self.rows, self.rows_per_batch, self.masking, 1, 0)
    self.turn = 0

  def describe(self) -> dict:
    # padding share of the transformers batches (one fresh batch per stream, same builder)
    fill = {k: float(np.mean(self.rows.batch(k, self.rows_per_batch[k], self.masking)["ours"]["mlm"]["segment_ids"]
                             > 0)) for k in self.rows.streams}
    return {"setting": self.setting, "probe_seconds": self.probe, "rows_per_batch": self.rows_per_batch,
            "non_pad_share_by_stream": fill}

  def run(self, budget: int) -> tuple[int, int, float]:
    self.turn, done, n, seconds = run_torch(self.runner, self.rows, self.rows_per_batch, self.masking, budget,
                                            self.turn)
    return done, n, seconds


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--variant", default="small", help="configs/multi30k.py variant (model size, vocabulary, batch)")
  p.add_argument("--budget", type=int, default=60000,
                 help="target (predicted) tokens each side trains on (a Multi30k en-fr epoch of MLM+TLM is about "
                      "260,000; at 30,000 our first steps, which fault the step's memory in, weighed on the ratio)")
  p.add_argument("--torch-rows", type=int, default=0,
                 help="rows per transformers batch (default: as many real tokens per batch as one of our objectives)")
  p.add_argument("--workdir", default="/tmp/xlm_jax_epoch", help="tokenizer and prepared data (reused)")
  p.add_argument("--ours-dtype", choices=("auto", "bfloat16", "float32"), default="auto",
                 help="our compute dtype; auto: the faster of the two in a short probe")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None)
  bench_common.add_host_malloc_flag(p)
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  host_malloc = bench_common.apply_host_malloc(args.host_malloc)
  record = dict(bench_common.provenance(), **host_malloc)
  workdir = os.path.join(args.workdir, args.variant)
  ours_side = bench_common.SideProcess(OursSide, args.variant, workdir, args.seed, args.ours_dtype,
                                       host_malloc=args.host_malloc)
  info = ours_side.call("describe")
  torch_side = bench_common.SideProcess(
      TorchSide, args.variant, workdir, args.seed, ours_side.call("initial_params"),
      info["real_tokens"] / len(info["objectives"]), args.torch_rows, host_malloc=args.host_malloc)
  half = args.budget // 2
  ours = {"seconds": 0.0, "targets": 0, "steps": 0}
  theirs = {"seconds": 0.0, "targets": 0, "steps": 0, "padded_slots": 0}
  for _ in range(2):
    for side, totals in ((ours_side, ours), (torch_side, theirs)):
      done, n, seconds = side.call("run", half)
      totals["seconds"] += seconds; totals["targets"] += done; totals["steps"] += n
      time.sleep(0.2)  # the side that just ran lets its thread pools go idle before the other starts
    print(f"half: ours {ours['seconds']:.1f} s / {ours['targets']} targets; transformers {theirs['seconds']:.1f} s / "
          f"{theirs['targets']} targets", flush=True)
  torch_info = torch_side.call("describe")
  ours_side.close(); torch_side.close()
  for side in (ours, theirs):
    side["targets_per_s"] = side["targets"] / side["seconds"]
  ratio = ours["targets_per_s"] / theirs["targets_per_s"]
  model = info["model"]
  result = dict(record, benchmark="epoch", variant=args.variant, budget_targets=args.budget,
                processes="one per framework (bench_common.SideProcess), alternating halves", model=model,
                ours=dict(ours, batch_rows=info["batch_rows"], row_length=info["row_length"],
                          objectives=info["objectives"], non_pad_share=info["real_tokens"] / info["slots"],
                          compile_s=info["compile_s"], dtype_probe_seconds=info["dtype_probe_seconds"]),
                transformers=dict(theirs, **torch_info), ratio=ratio, target_ratio=TARGET, meets_target=ratio >= TARGET)
  print(f"\nMulti30k en-fr MLM+TLM, {args.variant} (d={model['emb_dim']}, {model['n_layers']} layers, "
        f"V={model['vocab']}), budget {args.budget} targets; each framework in its own process")
  print(f"  ours ({model['dtype']}, packed, {info['real_tokens'] / info['slots']:.0%} real tokens): "
        f"{ours['seconds']:.1f} s, {ours['targets_per_s']:.0f} targets/s ({ours['steps']} steps; compile "
        f"{info['compile_s']:.1f} s not timed)")
  print(f"  transformers ({torch_info['setting']}, padded, real share {torch_info['non_pad_share_by_stream']}): "
        f"{theirs['seconds']:.1f} s, {theirs['targets_per_s']:.0f} targets/s ({theirs['steps']} batches)")
  print(f"epoch ratio={ratio:.2f} (target {TARGET})")
  if args.out:
    bench_common.write_json(args.out, result)
  return result


if __name__ == "__main__":
  main()
