"""A run killed after a checkpoint and started again with the same command ends where an uninterrupted run ends."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from conftest import ROOT, TINY_FLAGS, config_flags_for, run_main

FLAGS = {"train.steps": 40, "checkpoint.every": 10, "checkpoint.async_save": True, "log.batch_checksums": True,
         "data.mlm_steps": "xa,xb,xa-xb,xc-xa"}


def command(workdir):
  return [sys.executable, os.path.join(ROOT, "main.py"), f"--config={ROOT}/configs/demo.py", f"--workdir={workdir}",
          *config_flags_for({**TINY_FLAGS, **FLAGS})]


def test_killed_run_resumes_to_identical_parameters(tmp_path):
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  proc = run_main(str(straight), FLAGS)
  assert proc.returncode == 0, proc.stderr[-2000:]

  env = {**os.environ, "PYTHONPATH": ROOT}
  p = subprocess.Popen(command(killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.time() + 300
  while not (killed / "checkpoints" / "20" / "params").exists():
    assert p.poll() is None, p.stderr.read().decode()[-2000:]
    assert time.time() < deadline
    time.sleep(0.05)
  p.send_signal(signal.SIGKILL)
  p.wait()
  steps_left = sorted(int(n) for n in os.listdir(killed / "checkpoints") if n.isdigit())
  assert max(steps_left) < 40, "the run finished before it was killed; nothing was tested"

  again = subprocess.run(command(killed), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-2000:]
  assert "resumed from" in again.stderr

  # the batches: the resumed run replays from its checkpoint; the last checksum recorded for each step must be the
  # uninterrupted run's, for every step
  def checksums(workdir):
    out = {}
    for line in (workdir / "batch_checksums.jsonl").read_text().splitlines():
      record = json.loads(line)
      out[record["step"]] = record["checksum"]
    return out

  straight_sums, killed_sums = checksums(straight), checksums(killed)
  assert sorted(straight_sums) == sorted(killed_sums) == list(range(40))
  assert [killed_sums[s] for s in range(40)] == [straight_sums[s] for s in range(40)]
  assert len(set(straight_sums.values())) == 40

  import xlm_jax
  a, b = xlm_jax.load(str(straight)), xlm_jax.load(str(killed))
  diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(np.asarray(x) - np.asarray(y)).max()), a.params,
                                       b.params))
  print("max |parameter difference|:", max(diffs))
  assert max(diffs) <= 1e-6
  assert a.meta["step"] == b.meta["step"] == 40
