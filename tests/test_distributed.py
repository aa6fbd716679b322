"""Multi-process training through launch/local_multiprocess.sh, with dropout on, and elastic resume.

- 2 processes x 2 CPU devices (through the launcher, on 127.0.0.1) follow the loss curve of 1 process x 4 devices
  over 10 steps (relative difference <= 1e-5), each process building only its own rows (its batch checksums
  differ from the other process's at every step).
- The 2-process checkpoint of step 10 resumes in a 1-process run on another mesh (2 devices, preset fsdp), and
  the next 10 losses equal those of the uninterrupted 1-process run (<= 1e-5).
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, TINY_FLAGS, config_flags_for, run_main

LAUNCHER = os.path.join(ROOT, "launch", "local_multiprocess.sh")
FLAGS = {**TINY_FLAGS, "train.steps": 10, "checkpoint.every": 5, "checkpoint.async_save": False, "log.every": 1,
         "data.batch_size": 16, "data.mlm_steps": "xa,xb,xa-xb", "model.dropout": 0.1,
         "model.attention_dropout": 0.1, "log.batch_checksums": True}


def losses(workdir) -> dict[int, float]:
  out = {}
  for line in open(os.path.join(workdir, "metrics.jsonl")):
    record = json.loads(line)
    if record["kind"] == "train":
      out[record["step"]] = record["loss"]
  return out


def checksums(path) -> dict[int, str]:
  return {r["step"]: r["checksum"] for r in map(json.loads, open(path))}


def cpu_env(devices: int) -> dict:
  return {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}


def max_relative(a: dict, b: dict, steps) -> float:
  x, y = np.array([a[s] for s in steps]), np.array([b[s] for s in steps])
  return float(np.max(np.abs(x - y) / np.abs(x)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("distributed")
  one = run_main(str(tmp / "one"), {**FLAGS, "train.steps": 20}, extra_env=cpu_env(4))
  assert one.returncode == 0, one.stderr[-3000:]
  env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": ROOT}
  two = subprocess.run(["bash", LAUNCHER, "--logdir", str(tmp / "logs"), "2", "2",
                        f"--config={ROOT}/configs/demo.py", f"--workdir={tmp / 'two'}", *config_flags_for(FLAGS)],
                       env=env, capture_output=True, text=True, timeout=600)
  logs = "".join((tmp / "logs" / f"process{i}.log").read_text()[-2000:] for i in range(2)
                 if (tmp / "logs" / f"process{i}.log").exists())
  assert two.returncode == 0, two.stderr[-2000:] + logs
  shutil.copytree(tmp / "two", tmp / "elastic")
  elastic = run_main(str(tmp / "elastic"), {**FLAGS, "train.steps": 20, "mesh.preset": "fsdp"},
                     extra_env=cpu_env(2))
  assert elastic.returncode == 0, elastic.stderr[-3000:]
  return tmp, one, elastic


def test_two_processes_follow_one_process_with_dropout(runs):
  tmp, one, _ = runs
  a, b = losses(tmp / "one"), losses(tmp / "two")
  assert sorted(b) == list(range(1, 11))
  rel = max_relative(a, b, range(1, 11))
  print("2x2 vs 1x4, max relative loss difference over 10 steps:", rel)
  assert rel <= 1e-5
  assert a[10] < a[1]  # learning, so the curves are not two flat lines
  # the topology summary names both layouts
  log0 = (tmp / "logs" / "process0.log").read_text()
  assert "topology: 2 process(es), 2 local / 4 global cpu devices" in log0, log0[-2000:]
  assert "batch 16 rows global, 8 per process, 4 per device" in log0
  assert "topology: 1 process(es), 4 local / 4 global cpu devices" in one.stderr + one.stdout
  # each process built different rows at every step
  p0, p1 = checksums(tmp / "two" / "batch_checksums.jsonl"), checksums(tmp / "two" / "batch_checksums.process1.jsonl")
  assert sorted(p0) == sorted(p1) == list(range(10))
  assert all(p0[s] != p1[s] for s in range(10))
  # the checkpoint written by two processes opens like any bundle
  import xlm_jax
  assert xlm_jax.load(str(tmp / "two")).meta["step"] == 10


def test_elastic_resume_on_another_mesh(runs):
  tmp, _, elastic = runs
  assert "resumed from" in elastic.stderr
  assert "mesh {'data': 1, 'fsdp': 2, 'tensor': 1}" in elastic.stderr
  a, c = losses(tmp / "one"), losses(tmp / "elastic")
  rel = max_relative(a, c, range(11, 21))
  print("resumed 1x2 (fsdp) after 2x2 vs uninterrupted 1x4, max relative loss difference, steps 11-20:", rel)
  assert rel <= 1e-5


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
  """SIGTERM reaches process 1 only: its flag travels through the next jitted step, so process 0 stops at the same
  step (a checkpoint is a collective: disagreeing processes would hang or fail), both save and exit 0."""
  import signal
  import time
  workdir = tmp_path / "stopped"
  env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": ROOT}
  launcher = subprocess.Popen(["bash", LAUNCHER, "--logdir", str(tmp_path / "logs"), "2", "1",
                               f"--config={ROOT}/configs/demo.py", f"--workdir={workdir}",
                               *config_flags_for({**FLAGS, "train.steps": 100000, "checkpoint.every": 5,
                                                  "log.every": 5, "log.batch_checksums": False})],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.time() + 600
  while not (workdir / "checkpoints" / "5").exists():
    assert launcher.poll() is None and time.time() < deadline
    time.sleep(0.1)
  pids = [p for p in os.listdir("/proc") if p.isdigit()]
  target = []
  for pid in pids:
    try:
      with open(f"/proc/{pid}/cmdline", "rb") as f:
        args = f.read().split(b"\0")
    except OSError:
      continue
    if f"--workdir={workdir}".encode() in args and b"--config.distributed.process_id=1" in args and \
        any(a.endswith(b"main.py") for a in args):
      target.append(int(pid))
  assert len(target) == 1, target
  os.kill(target[0], signal.SIGTERM)
  _, err = launcher.communicate(timeout=600)
  log0 = (tmp_path / "logs" / "process0.log").read_text()
  assert launcher.returncode == 0, err.decode()[-2000:] + log0[-2000:]
  assert "stop requested (by another process or a preemption notice) at step " in log0, log0[-2000:]
  stopped = int(log0.split("stop requested (by another process or a preemption notice) at step ")[1].split(":")[0])
  assert f"saved step {stopped} to " in log0
  import xlm_jax
  assert xlm_jax.load(str(workdir)).meta["step"] == stopped
