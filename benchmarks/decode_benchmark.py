"""Decoding throughput of xlm_jax.decode against the original XLM code (GitHub issue #5).

The setting of shared/reference/baselines.md: an NMT model of d=512, 6 encoder + 6 decoder layers, 8 heads,
a 32,000-word vocabulary and random weights; 64 source sentences of 20 tokens (framed) decoded to a maximum
length of 30 with `</s>` blocked, so every sentence runs to the maximum length. Throughput is sentences per
second, encoder included, the median of --runs timed runs after a warm-up (compilation) run, all variants
interleaved in one process. Greedy and beam 4, float32 and bfloat16 matmul inputs.

    python benchmarks/decode_benchmark.py [--out result.json] [--xlm-repo PATH]

The ratio is taken against the original XLM code (facebookresearch/XLM, PyTorch): measured in the same run when
--xlm-repo points at a copy of that repository (a work tree, or a bare git directory from which `xlm/` is
extracted to a temporary directory); otherwise against baselines.md (27 sentences/s greedy, 10 beam 4, measured
on other machines: AVX-512 + bf16 Zen 4), which the output then says. Nothing from that repository is copied
here; it is imported from where it lies. Targets from the issue: >= 3x its greedy rate, >= 5x its beam-4 rate.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import flax.linen as nn
import jax
import jax.numpy as jnp

from xlm_jax import decode
from xlm_jax.model import TransformerConfig, init_params
from xlm_jax.train.flops import measured_peak_flops

BASELINE = {1: 27.0, 4: 10.0}       # sentences/s of the original XLM code, shared/reference/baselines.md
TARGET_FACTOR = {1: 3.0, 4: 5.0}    # the targets, as multiples of those rates
EOS, PAD, FIRST_WORD = 1, 2, 4


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--src-len", type=int, default=20, help="framed source length (both </s> included)")
  p.add_argument("--max-len", type=int, default=30, help="framed target length every sentence runs to")
  p.add_argument("--vocab", type=int, default=32000)
  p.add_argument("--dim", type=int, default=512)
  p.add_argument("--layers", type=int, default=6)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--beams", default="1,4", help="comma-separated beam sizes (1 = greedy)")
  p.add_argument("--dtypes", default="float32,bfloat16", help="matmul input dtypes of xlm_jax")
  p.add_argument("--runs", type=int, default=5, help="timed runs per variant (median reported)")
  p.add_argument("--xlm-repo", default=None, help="facebookresearch/XLM work tree or bare git dir, timed alongside")
  p.add_argument("--xlm-device", default="cpu", help="where the XLM code runs: cpu, or cuda on a GPU machine (then "
                 "xlm_jax runs on JAX's default device, the same GPU)")
  p.add_argument("--out", default=None, help="write the results as JSON here")
  p.add_argument("--xlm-worker", action="store_true", help=argparse.SUPPRESS)  # internal: serve XLM timings
  return p.parse_args(argv)


def source_batch(args) -> np.ndarray:
  """The source sentences: random words framed `</s> w... </s>`, no padding (the same in every process)."""
  src = np.random.default_rng(0).integers(FIRST_WORD, args.vocab, (args.batch, args.src_len)).astype(np.int32)
  src[:, 0] = src[:, -1] = EOS
  return src


def random_params(cfg: TransformerConfig, seed: int):
  """Random weights in the model's exact parameter tree, at the reference's init scales (numpy: instant)."""
  rng = np.random.default_rng(seed)
  shapes = nn.unbox(jax.eval_shape(lambda: init_params(cfg, jax.random.key(0))))

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if "scale" in name:
      return jnp.ones(leaf.shape, jnp.float32)
    if "embedding" in name:
      return jnp.asarray(rng.standard_normal(leaf.shape, np.float32) * cfg.emb_dim ** -0.5)
    fan_in = int(np.prod(leaf.shape[:2])) if "out_lin" in name and "kernel" in name else cfg.emb_dim
    if "lin2" in name:
      fan_in = cfg.ffn_dim
    bound = fan_in ** -0.5
    return jnp.asarray(rng.uniform(-bound, bound, leaf.shape).astype(np.float32))

  return jax.tree_util.tree_map_with_path(draw, shapes)


def decode_flops(args, beam: int) -> float:
  """Matmul FLOPs of one decode call: encoder, cross-attention keys/values, and (max_len - 1) decoder steps over
  batch x beam rows (projections, FFN, cross-attention queries/outputs, output projection; attention products
  over the cache are small and not counted)."""
  d, f = args.dim, 4 * args.dim
  enc = args.batch * args.src_len * args.layers * (2 * 4 * d * d + 2 * 2 * d * f)
  cross_kv = args.batch * args.src_len * args.layers * 2 * 2 * d * d
  per_row_step = args.layers * (2 * 4 * d * d + 2 * 2 * d * d + 2 * 2 * d * f) + 2 * d * args.vocab
  return float(enc + cross_kv + args.batch * beam * (args.max_len - 1) * per_row_step)


class XlmRunner:
  """Runs the original code: TransformerModel.generate / generate_beam, imported from a copy of the repo."""

  def __init__(self, repo: str, args, src: np.ndarray):
    root = self._work_tree(repo)
    sys.path.insert(0, root)
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    self._compat_torch(torch)
    from xlm.model.transformer import TransformerModel  # the original code, as it lies in `repo`
    self.torch = torch
    params = argparse.Namespace(
        n_langs=2, n_words=args.vocab, eos_index=EOS, pad_index=PAD, id2lang={0: "src", 1: "tgt"},
        lang2id={"src": 0, "tgt": 1}, use_lang_emb=True, emb_dim=args.dim, n_heads=args.heads,
        n_layers=args.layers, dropout=0.0, attention_dropout=0.0, sinusoidal_embeddings=False,
        gelu_activation=True, share_inout_emb=True, asm=False)
    dico = [str(i) for i in range(args.vocab)]
    torch.manual_seed(0)
    self.device = torch.device(args.xlm_device)
    self.encoder = TransformerModel(params, dico, is_encoder=True, with_output=True).eval().to(self.device)
    self.decoder = TransformerModel(params, dico, is_encoder=False, with_output=True).eval().to(self.device)
    scores = self.decoder.pred_layer.get_scores

    def blocked(x):  # forbid </s> so that every sentence runs to max_len, as on our side
      out = scores(x)
      out[:, EOS] = -float("inf")
      return out

    self.decoder.pred_layer.get_scores = blocked
    self.x = torch.from_numpy(src.T.astype(np.int64)).contiguous().to(self.device)  # (slen, bs), time-major
    self.lengths = torch.full((src.shape[0],), src.shape[1], dtype=torch.long, device=self.device)
    self.langs = torch.zeros_like(self.x)
    self.max_len = args.max_len

  @staticmethod
  def _work_tree(repo: str) -> str:
    if os.path.isdir(os.path.join(repo, "xlm", "model")):
      return repo
    out = tempfile.mkdtemp(prefix="xlm_ref_")
    archive = subprocess.run(["git", "--git-dir", repo, "archive", "HEAD", "xlm"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", out], input=archive.stdout, check=True)
    return out

  @staticmethod
  def _compat_torch(torch):
    """The 2019 code masks with uint8 tensors, which torch 2 rejects in masked_fill_; accept them as bool."""
    original = torch.Tensor.masked_fill_

    def masked_fill_(self, mask, value):
      return original(self, mask.bool() if mask.dtype == torch.uint8 else mask, value)

    torch.Tensor.masked_fill_ = masked_fill_

  def __call__(self, beam: int):
    torch = self.torch
    with torch.no_grad():
      enc = self.encoder("fwd", x=self.x, lengths=self.lengths, langs=self.langs, causal=False).transpose(0, 1)
      if beam == 1:
        out, lengths = self.decoder.generate(enc, self.lengths, 1, max_len=self.max_len)
      else:
        out, lengths = self.decoder.generate_beam(enc, self.lengths, 1, beam_size=beam, length_penalty=1.0,
                                                  early_stopping=False, max_len=self.max_len)
      if self.device.type == "cuda":
        torch.cuda.synchronize()
    if out.shape[0] != self.max_len:
      raise RuntimeError(f"XLM decoded to length {out.shape[0]}, expected {self.max_len}")
    return out


class XlmWorker:
  """XlmRunner in a child process (PyTorch's and XLA's thread pools never share a process), timed inside it.

  Protocol on the child's stdin/stdout: the parent writes a beam size per line, the child answers the seconds
  that decoding took ('ready' first, once the models are built)."""

  def __init__(self, args):
    argv = [sys.executable, os.path.abspath(__file__), "--xlm-worker", "--xlm-repo", args.xlm_repo,
            "--batch", str(args.batch), "--src-len", str(args.src_len), "--max-len", str(args.max_len),
            "--vocab", str(args.vocab), "--dim", str(args.dim), "--layers", str(args.layers), "--heads",
            str(args.heads), "--xlm-device", args.xlm_device]
    self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    if self._read() != "ready":
      raise RuntimeError("the XLM worker did not start")

  def _read(self) -> str:
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"the XLM worker exited (status {self.proc.poll()})")
    return line.strip()

  def __call__(self, beam: int) -> float:
    self.proc.stdin.write(f"{beam}\n")
    return float(self._read())

  def close(self):
    self.proc.stdin.close()
    self.proc.wait(timeout=60)


def serve_xlm(args) -> None:
  runner = XlmRunner(args.xlm_repo, args, source_batch(args))
  print("ready", flush=True)
  for line in sys.stdin:
    start = time.perf_counter()
    runner(int(line))
    print(f"{time.perf_counter() - start:.6f}", flush=True)


def ours(args, dtype: str, beam: int, src, params) -> Callable[[], object]:
  enc = TransformerConfig(vocab_size=args.vocab, emb_dim=args.dim, n_layers=args.layers, n_heads=args.heads,
                          n_langs=2, pad_id=PAD, dtype=dtype)
  dec = enc.replace(is_decoder=True)
  src_langs, tgt_langs = np.zeros(len(src), np.int32), np.ones(len(src), np.int32)

  def run():
    out = decode.generate(params, enc, dec, src, src_langs, tgt_langs, beam_size=beam, eos_id=EOS, pad_id=PAD,
                          max_len=args.max_len, block_eos=True)
    return jax.block_until_ready(out)

  return run


def main(argv=None):
  args = parse_args(argv)
  if args.xlm_worker:
    return serve_xlm(args)
  beams = [int(b) for b in args.beams.split(",")]
  dtypes = [d for d in args.dtypes.split(",") if d]
  src = source_batch(args)
  cfg = TransformerConfig(vocab_size=args.vocab, emb_dim=args.dim, n_layers=args.layers, n_heads=args.heads,
                          n_langs=2, pad_id=PAD)
  params = {"encoder": random_params(cfg, 0), "decoder": random_params(cfg.replace(is_decoder=True), 1)}

  load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
  variants: dict[tuple, Callable[[], object]] = {}
  for beam in beams:
    for dtype in dtypes:
      variants[("xlm_jax", dtype, beam)] = ours(args, dtype, beam, src, params)
  xlm = XlmWorker(args) if args.xlm_repo else None
  if xlm:
    for beam in beams:
      variants[("XLM (PyTorch)", "float32", beam)] = lambda beam=beam: xlm(beam)

  def timed(key, fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return (out if key[0] != "xlm_jax" else time.perf_counter() - start), out

  warmup = {}
  for key, fn in variants.items():
    warmup[key], out = timed(key, fn)
    if key[0] == "xlm_jax" and not np.all(np.asarray(out.lengths) == args.max_len):
      raise RuntimeError(f"{key}: not every sentence ran to max_len ({np.unique(np.asarray(out.lengths))})")
    print(f"warm-up {key}: {warmup[key]:.2f} s", file=sys.stderr, flush=True)
  times = {key: [] for key in variants}
  for _ in range(args.runs):                     # interleaved, so that machine noise hits every variant alike
    for key, fn in variants.items():
      times[key].append(timed(key, fn)[0])
  if xlm:
    xlm.close()

  load_end = os.getloadavg() if hasattr(os, "getloadavg") else None
  # The ceiling of any implementation on this device: every decoding FLOP at the best square-matmul peak among
  # the timed matmul input dtypes (float32 accumulation).
  peaks = {dtype: measured_peak_flops.__wrapped__(dtype) for dtype in dtypes or ["float32"]}
  peak_dtype, peak = max(peaks.items(), key=lambda kv: kv[1])
  ceiling = {beam: args.batch / (decode_flops(args, beam) / peak) for beam in beams}
  rows = []
  for (impl, dtype, beam), ts in times.items():
    median = statistics.median(ts)
    rate = args.batch / median
    xlm_key = ("XLM (PyTorch)", "float32", beam)
    same_run = args.batch / statistics.median(times[xlm_key]) if xlm_key in times else None
    rows.append(dict(implementation=impl, dtype=dtype, beam=beam, median_s=median, runs_s=ts,
                     warmup_s=warmup[(impl, dtype, beam)], sentences_per_s=rate,
                     gflops_per_s=decode_flops(args, beam) / median / 1e9,
                     share_of_peak=decode_flops(args, beam) / median / peak,
                     vs_xlm_same_run=(rate / same_run) if same_run and impl == "xlm_jax" else None,
                     vs_xlm_baselines_md=(rate / BASELINE[beam]) if beam in BASELINE and impl == "xlm_jax" else None))

  print(f"\nDecoding {args.batch} sentences of {args.src_len} tokens to length {args.max_len} (</s> blocked), "
        f"d={args.dim}, {args.layers}+{args.layers} layers, {args.heads} heads, vocab {args.vocab}; "
        f"median of {args.runs} interleaved runs; {os.cpu_count()} CPU cores, jax {jax.__version__}; 1-minute load "
        f"average {load_start and round(load_start[0], 2)} at the start (before this run) and "
        f"{load_end and round(load_end[0], 2)} at the end (this run included).")
  head = "| implementation | dtype | beam | median s | sentences/s | GFLOP/s | vs XLM, same run | vs XLM, baselines.md |"
  print(head)
  print("|---" * (head.count("|") - 1) + "|")
  fmt = lambda r: f"{r:.2f}x" if r is not None else "-"
  for r in rows:
    print(f"| {r['implementation']} | {r['dtype']} | {r['beam']} | {r['median_s']:.3f} | {r['sentences_per_s']:.1f} |"
          f" {r['gflops_per_s']:.0f} | {fmt(r['vs_xlm_same_run'])} | {fmt(r['vs_xlm_baselines_md'])} |")
  for beam in beams:
    xlm_key = ("XLM (PyTorch)", "float32", beam)
    xlm_rate = args.batch / statistics.median(times[xlm_key]) if xlm_key in times else BASELINE.get(beam)
    bound = f" = {ceiling[beam] / xlm_rate:.1f}x XLM's rate" if xlm_rate else ""
    print(f"ceiling, beam {beam}: every FLOP at the measured {peak_dtype} matmul peak ({peak / 1e9:.0f} GFLOP/s) gives "
          f"{ceiling[beam]:.1f} sentences/s{bound}")
  print("targets: " + ", ".join(f"beam {b}: >= {TARGET_FACTOR[b]:.0f}x XLM ({TARGET_FACTOR[b] * BASELINE[b]:.0f} "
                                f"sentences/s against baselines.md)" for b in beams if b in BASELINE))
  if load_start and load_start[0] > 0.5:           # measured before this process ran anything heavy
    print("WARNING: other processes were running (load average above 0.5 at the start). PyTorch's OpenMP threads stall on "
          "a busy machine (each op waits for a descheduled thread), so the XLM timings, and the ratios, are not "
          "trustworthy; re-run on an idle machine.")
  if not args.xlm_repo:
    print("XLM was not timed in this run (no --xlm-repo): ratios are against the baselines.md figures, which were "
          "measured on other machines.")
  if args.out:
    cpu_flags = ""
    if os.path.exists("/proc/cpuinfo"):
      cpu_flags = next((l.split(":", 1)[1] for l in open("/proc/cpuinfo") if l.startswith("flags")), "")
    command = "python benchmarks/decode_benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result = dict(command=command.strip(),
                  args=vars(args), rows=rows, peak_gflops={d: p / 1e9 for d, p in peaks.items()},
                  ceiling_sentences_per_s={str(b): c for b, c in ceiling.items()},
                  baseline_sentences_per_s=BASELINE, target_factor=TARGET_FACTOR,
                  load_average_start=load_start, load_average_end=load_end,
                  machine=dict(cpus=os.cpu_count(), platform=platform.platform(), jax=jax.__version__,
                               avx512=("avx512f" in cpu_flags), avx512_bf16=("avx512_bf16" in cpu_flags)))
    with open(args.out, "w") as f:
      json.dump(result, f, indent=2)
  return rows


if __name__ == "__main__":
  main()
