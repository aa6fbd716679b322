"""Time the README's quick-start command 1 as a new user runs it: a fresh clone, a fresh virtual environment.

  python benchmarks/quickstart_demo.py --out benchmarks/results/demo.json

Clones HEAD of this repository into a temporary directory, runs the command between the `demo-command`
markers of README.md there (venv + pip install + the demo), and records the wall time of the whole command and
the figures the demo wrote to `runs/demo/demo.json` (held-out MLM accuracy beside its unigram baseline, TLM with
and without the translation, BLEU). The pip install may be served from the local pip cache.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_command(marker: str) -> str:
  text = open(os.path.join(ROOT, "README.md")).read()
  block = text.split(f"<!-- {marker} -->")[1].split(f"<!-- /{marker} -->")[0]
  return "\n".join(l for l in block.strip().splitlines() if not l.startswith("```")).strip()


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  command = readme_command("demo-command")
  work = tempfile.mkdtemp(prefix="xlm_jax_quickstart_")
  subprocess.run(["git", "clone", "-q", ROOT, os.path.join(work, "repo")], check=True)
  repo = os.path.join(work, "repo")
  shared = os.path.join(os.path.dirname(ROOT), "shared")
  if os.path.isdir(shared):
    os.symlink(shared, os.path.join(work, "shared"))
  env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
  start = time.time()
  proc = subprocess.run(["bash", "-c", command], cwd=repo, env=env, capture_output=True, text=True)
  seconds = time.time() - start
  print(proc.stdout[-3000:])
  if proc.returncode != 0:
    print(proc.stderr[-3000:], file=sys.stderr)
    sys.exit(proc.returncode)
  demo = json.load(open(os.path.join(repo, "runs", "demo", "demo.json")))
  s = demo["summary"]
  figures = {
      "demo alone (after installation)": f"{demo['seconds']:.0f} s (pretraining {demo['pretraining_seconds']:.0f} s)",
      "held-out MLM accuracy / unigram baseline": f"{s['mlm_acc']:.3f} / {s['unigram_acc']:.3f} "
                                                  f"({s['mlm_acc'] / s['unigram_acc']:.1f}x)",
      "held-out MLM perplexity / unigram": f"{s['mlm_ppl']:.2f} / {s['unigram_ppl']:.2f}",
      "held-out TLM accuracy with / without the translation": f"{s['tlm_with_translation_acc']:.3f} / "
                                                              f"{s['tlm_without_translation_acc']:.3f}",
      "TLM pairs skipped for not fitting bptt (held-out)": str(s["tlm_pairs_skipped"]),
      **{f"held-out BLEU {d} (sacreBLEU, generated test set)": f"{v:.2f}" for d, v in sorted(demo["bleu"].items())}}
  from xlm_jax.provenance import provenance
  result = {**provenance(), "readme_command": command, "seconds": seconds, "figures": figures, "demo": demo,
            "timed_by": "python benchmarks/quickstart_demo.py"}
  print(json.dumps(result, indent=1))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
