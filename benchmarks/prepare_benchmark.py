"""Preparation in bounded memory (issue #8): peak RSS and throughput of preparing 20 M and 80 M tokens.

  python benchmarks/prepare_benchmark.py --out benchmarks/results/prepare_cpu.json

The corpus is built in a temporary directory (never committed) by repeating Multi30k's English training text
(../shared/data/multi30k/train.en.gz, or --text FILE) until it holds each size in tokens; a BPE of 8,000 pieces is
trained on the original text. Each size is prepared by `xlm_jax.data.prepare.prepare` (monolingual: one flat token
store) in a fresh child process, whose peak resident memory (`ru_maxrss` of the child) and wall time are
reported; the flat-memory target is that the larger corpus needs at most 1.2x the smaller one's memory.
Prints one `key=value` line per size and one for the ratio.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(args) -> None:
  """Prepare `args.corpus` once; print the JSON of what happened (run in a fresh process)."""
  from xlm_jax.data.prepare import prepare
  from xlm_jax.io_utils import read_lines
  from xlm_jax.tokenizer import tokenizer_from_state
  with open(args.tokenizer) as f:
    tok = tokenizer_from_state(json.load(f))
  t = time.perf_counter()
  data = prepare("mono.en", args.cache, {"train": lambda: read_lines(args.corpus)}, n_fields=1,
                 encode=lambda s: tok.encode(s, "en"), unk_id=tok.unk_id, eos_id=tok.eos_id,
                 fingerprint={"corpus": args.corpus, "size": os.path.getsize(args.corpus)}, input_files=[args.corpus],
                 workers=args.workers, notice=lambda s: None)
  seconds = time.perf_counter() - t
  split = data.manifest["splits"]["train"]
  print(json.dumps({"tokens": split["tokens"], "sentences": split["sentences"], "seconds": seconds,
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "store_bytes": data.manifest["stores"]["train"][0]["tokens"]["bytes"]}))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--text", default=os.path.join(ROOT, "..", "shared", "data", "multi30k", "train.en.gz"))
  parser.add_argument("--sizes", default="20000000,80000000", help="corpus sizes in tokens")
  parser.add_argument("--workers", type=int, default=1, help="encoding processes")
  parser.add_argument("--out", default=None)
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--corpus", help=argparse.SUPPRESS)
  parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
  parser.add_argument("--cache", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(args)
    return
  from xlm_jax.io_utils import read_lines
  from xlm_jax.tokenizer import train_sentencepiece
  tmp = tempfile.mkdtemp(prefix="xlm_prepare_bench_")
  try:
    lines = list(read_lines(args.text))
    tok = train_sentencepiece({"en": lambda: iter(lines)}, 8000, n_sentences=len(lines))
    with open(os.path.join(tmp, "tokenizer.json"), "w") as f:
      json.dump(tok.state(), f)
    per_pass = sum(len(tok.encode(line, "en")) for line in lines if line.strip())
    results = {}
    for size in (int(s) for s in args.sizes.split(",")):
      corpus = os.path.join(tmp, f"train.{size}.en")
      repeats = math.ceil(size / per_pass)
      block = "\n".join(lines) + "\n"
      with open(corpus, "w", encoding="utf-8") as f:
        for _ in range(repeats):
          f.write(block)
      run = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "--corpus", corpus, "--tokenizer",
                            os.path.join(tmp, "tokenizer.json"), "--cache", os.path.join(tmp, f"cache{size}"),
                            "--workers", str(args.workers)], capture_output=True, text=True, check=True)
      r = json.loads(run.stdout.strip().splitlines()[-1])
      r["tokens_per_s"] = r["tokens"] / r["seconds"]
      results[str(size)] = r
      print(f"case=prepare target_tokens={size} tokens={r['tokens']} peak_rss_mb={r['peak_rss_mb']:.0f} "
            f"seconds={r['seconds']:.1f} tokens_per_s={r['tokens_per_s']:.0f} workers={args.workers}", flush=True)
      shutil.rmtree(os.path.join(tmp, f"cache{size}"))
      os.remove(corpus)
    sizes = sorted(results, key=int)
    ratio = results[sizes[-1]]["peak_rss_mb"] / results[sizes[0]]["peak_rss_mb"]
    print(f"case=prepare target=rss_{sizes[-1]}_over_{sizes[0]} ratio={ratio:.2f} goal=1.2")
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  if args.out:
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    with open(args.out, "w") as f:
      json.dump({"command": "python benchmarks/prepare_benchmark.py " + " ".join(sys.argv[1:]), "git_commit": commit,
                 "machine": f"{cpu}, {os.cpu_count()} cpus, {platform.machine()}", "results": results,
                 "rss_ratio": ratio}, f, indent=1)


if __name__ == "__main__":
  main()
