"""Is the demo slower with the new input pipeline? Its pretraining phase, old tree against this tree, alternately.

  git worktree add /tmp/xlm_old d92c5a6
  flock -x /tmp/xlm_cpu.lock python benchmarks/demo_speed.py --old-tree /tmp/xlm_old \
      --out benchmarks/results/demo_speed.json

Runs `main.py --config=configs/demo.py:pretrain` (the demo's pretraining: generated corpus, MLM + TLM, 32 x 64 per
objective, d=128) for `--steps` steps in a fresh workdir, from each tree in turn (`--repeats` rounds, old first
in odd rounds, new first in even ones), each with its own defaults (the new tree: Grain workers = the cores
available). Reported per run: wall time of the whole command (start-up, corpus, tokenizer, preparation, training,
evaluation) and the steps/s the loop logged after its first window (compilation excluded). One `key=value` line
per run and one per tree with the medians.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(tree: str, steps: int) -> dict:
  workdir = tempfile.mkdtemp(prefix="xlm_demo_speed_")
  command = [sys.executable, os.path.join(tree, "main.py"), f"--config={tree}/configs/demo.py:pretrain",
             f"--workdir={workdir}", f"--config.train.steps={steps}", "--config.log.every=50",
             "--config.log.progress_bar=False", "--config.checkpoint.every=100000"]
  t = time.perf_counter()
  subprocess.run(command, cwd=tree, env={**os.environ, "PYTHONPATH": tree}, check=True, capture_output=True)
  wall = time.perf_counter() - t
  rates = [r["steps_per_sec"] for r in map(json.loads, open(os.path.join(workdir, "metrics.jsonl")))
           if r.get("kind") == "train" and "steps_per_sec" in r]
  subprocess.run(["rm", "-rf", workdir], check=False)
  return {"wall_s": wall, "steps_per_sec": statistics.median(rates[1:] or rates)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--old-tree", required=True)
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  trees = {"old": args.old_tree, "new": ROOT}
  runs: dict[str, list] = {"old": [], "new": []}
  for r in range(args.repeats):
    for name in (("old", "new") if r % 2 == 0 else ("new", "old")):
      result = run(trees[name], args.steps)
      runs[name].append(result)
      print(f"case=demo_pretrain tree={name} round={r} steps={args.steps} wall_s={result['wall_s']:.1f} "
            f"steps_per_s={result['steps_per_sec']:.2f}", flush=True)
  summary = {name: {"wall_s": statistics.median(x["wall_s"] for x in rs),
                    "steps_per_sec": statistics.median(x["steps_per_sec"] for x in rs)} for name, rs in runs.items()}
  for name, s in summary.items():
    print(f"case=demo_pretrain tree={name} median_wall_s={s['wall_s']:.1f} median_steps_per_s={s['steps_per_sec']:.2f}")
  print(f"case=demo_pretrain target=new_over_old_wall ratio={summary['new']['wall_s'] / summary['old']['wall_s']:.3f} "
        "goal<=1.0")
  if args.out:
    commit = lambda tree: subprocess.run(["git", "-C", tree, "rev-parse", "HEAD"], capture_output=True,
                                         text=True).stdout.strip()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")
    with open(args.out, "w") as f:
      json.dump({"command": "python benchmarks/demo_speed.py " + " ".join(sys.argv[1:]),
                 "commits": {name: commit(tree) for name, tree in trees.items()},
                 "machine": f"{cpu}, {os.cpu_count()} cpus, {platform.machine()}", "runs": runs,
                 "summary": summary}, f, indent=1)


if __name__ == "__main__":
  main()
