"""Interrupted runs started again with the same command end where an uninterrupted run ends: same batches, same
parameters. Two interruptions: SIGKILL (a crash; resume from the last complete checkpoint) and SIGTERM (a
preemption notice; the run saves where it is and stops cleanly)."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, TINY_FLAGS, config_flags_for, run_main

FLAGS = {"train.steps": 40, "checkpoint.every": 10, "checkpoint.async_save": True, "log.batch_checksums": True,
         "data.mlm_steps": "xa,xb,xa-xb,xc-xa"}
INTERRUPTED = {**FLAGS, "data.workers": 2}  # the interrupted runs build their batches in 2 worker processes, the
                                            # straight run in a thread: the batches may not depend on it


def command(workdir):
  return [sys.executable, os.path.join(ROOT, "main.py"), f"--config={ROOT}/configs/demo.py", f"--workdir={workdir}",
          *config_flags_for({**TINY_FLAGS, **INTERRUPTED})]


def checksums(workdir):
  """The last checksum recorded for each step (a resumed run replays steps after its checkpoint)."""
  out = {}
  for line in (workdir / "batch_checksums.jsonl").read_text().splitlines():
    record = json.loads(line)
    out[record["step"]] = record["checksum"]
  return out


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("straight")
  proc = run_main(str(workdir), FLAGS)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return workdir


def interrupt(workdir, sig, after_step: int):
  env = {**os.environ, "PYTHONPATH": ROOT}
  p = subprocess.Popen(command(workdir), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.time() + 300
  while not (workdir / "checkpoints" / str(after_step) / "params").exists():
    assert p.poll() is None, p.stderr.read().decode()[-2000:]
    assert time.time() < deadline
    time.sleep(0.05)
  p.send_signal(sig)
  _, err = p.communicate(timeout=300)
  return p.returncode, err.decode()


def resume_and_compare(straight, workdir):
  env = {**os.environ, "PYTHONPATH": ROOT}
  again = subprocess.run(command(workdir), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-2000:]
  assert "resumed from" in again.stderr
  straight_sums, resumed_sums = checksums(straight), checksums(workdir)
  assert sorted(straight_sums) == sorted(resumed_sums) == list(range(40))
  assert [resumed_sums[s] for s in range(40)] == [straight_sums[s] for s in range(40)]
  assert len(set(straight_sums.values())) == 40
  import xlm_jax
  a, b = xlm_jax.load(str(straight)), xlm_jax.load(str(workdir))
  diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(np.asarray(x) - np.asarray(y)).max()), a.params,
                                       b.params))
  print("max |parameter difference|:", max(diffs))
  assert max(diffs) <= 1e-6
  assert a.meta["step"] == b.meta["step"] == 40


def test_killed_run_resumes_to_identical_batches_and_parameters(straight, tmp_path):
  workdir = tmp_path / "killed"
  code, _ = interrupt(workdir, signal.SIGKILL, after_step=20)
  assert code == -signal.SIGKILL
  steps_left = sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())
  assert max(steps_left) < 40, "the run finished before it was killed; nothing was tested"
  resume_and_compare(straight, workdir)


def test_preemption_signal_saves_and_stops_cleanly(straight, tmp_path):
  workdir = tmp_path / "preempted"
  code, err = interrupt(workdir, signal.SIGTERM, after_step=10)
  assert code == 0, err[-2000:]
  assert "stop requested (SIGTERM) at step" in err
  stopped = int(err.split("stop requested (SIGTERM) at step ")[1].split(":")[0])
  assert f"saved step {stopped} to " in err
  assert 10 <= stopped < 40 and (workdir / "checkpoints" / str(stopped) / "params").exists()
  resume_and_compare(straight, workdir)
