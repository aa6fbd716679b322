"""Equal loss behaviour: our step and transformers' on the same weights and batches, 50 steps, dropout 0.

  python benchmarks/equal_loss.py --out benchmarks/results/equal_loss_cpu.json --plot docs/equal_loss.png

The model is configs/multi30k.py:<variant> (en, fr); the batches are Multi30k en/fr sentences and en-fr pairs
padded as benchmarks/epoch.py builds them for transformers (one example per row, so both frameworks can take the
very same rows: positions restarting at the second sentence, per-token language ids, padding mask), objectives
taking turns, 15% of real tokens predicted; Adam at a constant learning rate. Four runs from one initialisation:
ours f32 and bf16, transformers fp32 and bf16 autocast.

What "agree" means: float32 against float32 differ by float32 rounding only (and grow slowly through Adam);
bf16 runs differ from the fp32 ones by bf16 noise. The check passes when ours-bf16 stays as close to
transformers-fp32 as transformers' own bf16 autocast does (max over steps, with a 2x allowance plus 0.02 nats),
and ours-f32 within 1e-2 of transformers-fp32.
"""
from __future__ import annotations

import argparse
import os


import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

import bench_common  # noqa: E402
import epoch  # noqa: E402
import train_step  # noqa: E402
from xlm_jax.model import init_params  # noqa: E402

SETTINGS = ("torch-fp32", "torch-bf16", "ours-f32", "ours-bf16")


def plot(result: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  losses = result["losses"]
  steps = np.arange(1, len(losses["torch-fp32"]) + 1)
  fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
  for name in SETTINGS:
    top.plot(steps, losses[name], label=name, lw=1.2, ls="--" if name.startswith("torch") else "-")
  top.set_ylabel("MLM/TLM loss (nats)")
  top.legend()
  top.set_title(f"same weights, same batches, dropout 0 ({result['variant']}: d={result['model']['emb_dim']}, "
                f"{result['model']['n_layers']} layers, V={result['model']['vocab']})", fontsize=9)
  reference = np.asarray(losses["torch-fp32"])
  for name in SETTINGS[1:]:
    bottom.plot(steps, np.asarray(losses[name]) - reference, label=f"{name} - torch-fp32", lw=1.0)
  bottom.axhline(0, color="k", lw=0.5)
  bottom.set_xlabel("step")
  bottom.set_ylabel("difference")
  bottom.legend(fontsize=8)
  fig.text(0.01, 0.005, f"{result['git_commit'][:12]}  {result['date_utc']}  jax {result['versions']['jax']}  torch "
           f"{result['versions'].get('torch')}", fontsize=6, color="gray")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  print(f"wrote {path}")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--variant", default="small")
  p.add_argument("--steps", type=int, default=50)
  p.add_argument("--rows", type=int, default=32, help="rows per batch")
  p.add_argument("--lr", type=float, default=3e-4, help="constant Adam learning rate")
  p.add_argument("--workdir", default="/tmp/xlm_jax_epoch")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None)
  p.add_argument("--plot", default=None, help="write the plot (PNG) here")
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  record = bench_common.provenance()
  import torch
  torch.set_num_threads(os.cpu_count() or 1)
  config, _, context = epoch.build_ours(args.variant, os.path.join(args.workdir, args.variant), dropout=0.0)
  cfg = context["model_config"].replace(dtype="float32")
  rows = epoch.PaddedRows(epoch.read_pairs(config.data.corpus), context["tokenizer"], context["lang2id"],
                          config.data.bptt, args.seed)
  batches = [rows.batch(("en", "fr", "en-fr")[i % 3], args.rows, context["masking"]) for i in range(args.steps)]
  params = nn.unbox(init_params(cfg, jax.random.key(args.seed)))
  losses = {}
  for name in SETTINGS:
    bf16 = name.endswith("bf16")
    if name.startswith("ours"):
      runner = train_step.Ours(cfg.replace(dtype="bfloat16" if bf16 else "float32"), params, lr=args.lr)
      losses[name] = [runner.run([jax.tree.map(jax.numpy.asarray, b["ours"])])[0] for b in batches]
    else:
      runner = train_step.Torch(train_step.torch_model(cfg, params), bf16=bf16, lr=args.lr)
      losses[name] = runner.run(train_step.torch_batches(batches))
    print(f"{name}: first {losses[name][0]:.4f}  last {losses[name][-1]:.4f}", flush=True)
  reference = np.asarray(losses["torch-fp32"])
  max_diff = {name: float(np.max(np.abs(np.asarray(losses[name]) - reference))) for name in SETTINGS[1:]}
  bf16_noise = max_diff["torch-bf16"]
  passed = {"ours-f32": max_diff["ours-f32"] <= 1e-2, "ours-bf16": max_diff["ours-bf16"] <= 2 * bf16_noise + 0.02}
  result = dict(record, benchmark="equal_loss", variant=args.variant, steps=args.steps, rows=args.rows, lr=args.lr,
                model={"emb_dim": cfg.emb_dim, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
                       "vocab": cfg.vocab_size, "dropout": 0.0},
                losses=losses, max_abs_diff_to_torch_fp32=max_diff, passed=passed, plot=args.plot)
  for name, d in max_diff.items():
    print(f"max |{name} - torch-fp32| over {args.steps} steps: {d:.4f}")
  print(f"equal loss: ours-f32 {'ok' if passed['ours-f32'] else 'DIFFERS'}, ours-bf16 "
        f"{'within bf16 noise' if passed['ours-bf16'] else 'DIFFERS beyond bf16 noise'}")
  if args.plot:
    plot(result, args.plot)
  if args.out:
    bench_common.write_json(args.out, result)
  return result


if __name__ == "__main__":
  main()
