"""Time the README's quick-start command 1 as a new user runs it: a fresh clone, a fresh virtual environment.

  python benchmarks/quickstart_demo.py --out benchmarks/results/demo.json

Clones HEAD of this repository into a temporary directory, runs the command between the `demo-command`
markers of README.md there (venv + pip install + the demo), and records the wall time of the whole command and
the figures the demo prints. The pip install may be served from the local pip cache.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
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
  figures = {}
  demo = re.search(r"demo finished in (\d+)s \(pretraining (\d+)s\)", proc.stdout)
  if demo:
    figures["demo alone (after installation)"] = f"{demo.group(1)} s (pretraining {demo.group(2)} s)"
  mlm = re.search(r"held-out MLM perplexity ([0-9.]+), accuracy ([0-9.]+).*TLM accuracy ([0-9.]+)", proc.stdout)
  if mlm:
    figures["held-out MLM perplexity / accuracy"] = f"{mlm.group(1)} / {mlm.group(2)}"
    figures["held-out TLM accuracy"] = mlm.group(3)
  for direction, value in re.findall(r"held-out BLEU (\S+): ([0-9.]+)", proc.stdout):
    figures[f"held-out BLEU {direction} (sacreBLEU, generated test set)"] = value
  import multiprocessing
  result = {"command": command, "seconds": seconds, "figures": figures,
            "machine": f"{platform.processor() or platform.machine()}, {multiprocessing.cpu_count()} cores, "
                       f"Python {platform.python_version()}",
            "timed_by": "python benchmarks/quickstart_demo.py"}
  print(json.dumps(result, indent=1))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
