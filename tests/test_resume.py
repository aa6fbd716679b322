"""The soak test: a run killed 5 times at random moments (SIGKILL and SIGTERM mixed, one SIGKILL landing during an
asynchronous save), restarted each time with the same command, ends with the batches and parameters of an
uninterrupted run. SIGKILL is a crash (resume from the newest complete checkpoint); SIGTERM is a preemption notice
(finish the step, save, exit 0). Short form in CI on the tiny config; XLM_JAX_FULL_TESTS=1 runs the long form on the
demo config's model and data sizes."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import FULL, ROOT, TINY_FLAGS, config_flags_for, run_main

FLAGS = {"train.steps": 120, "checkpoint.every": 10, "checkpoint.async_save": True, "log.batch_checksums": True,
         "data.mlm_steps": "xa,xb,xa-xb,xc-xa"}


# The soak saves every 5 steps (more moments to land in; the cadence of checkpoints changes no parameter) and builds
# its batches in 2 worker processes, the straight run in a thread: the batches may not depend on it.
SOAK = {**FLAGS, "checkpoint.every": 5, "data.workers": 2}
# Long form: the demo config's model and data sizes (not the tiny ones), 120 steps.
LONG = {"train.steps": 120, "checkpoint.every": 10, "checkpoint.async_save": True, "log.batch_checksums": True,
        "log.progress_bar": False, "log.every": 20, "log.eval_every": 0, "demo.nmt_steps": 0,
        "compilation_cache_dir": TINY_FLAGS["compilation_cache_dir"]}


def command(workdir, flags=None):
  flags = {**TINY_FLAGS, **(flags or FLAGS)} if not FULL else {"task": "pretrain", **LONG}
  return [sys.executable, os.path.join(ROOT, "main.py"), f"--config={ROOT}/configs/demo.py", f"--workdir={workdir}",
          *config_flags_for(flags)]


def total_steps() -> int:
  return LONG["train.steps"] if FULL else FLAGS["train.steps"]


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
  proc = subprocess.run(command(workdir), cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True,
                        text=True, timeout=3600)
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


def resume_and_compare(straight, workdir, flags=None):
  env = {**os.environ, "PYTHONPATH": ROOT}
  again = subprocess.run(command(workdir, flags), cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
  assert again.returncode == 0, again.stderr[-2000:]
  assert "resumed from" in again.stderr
  n = total_steps()
  straight_sums, resumed_sums = checksums(straight), checksums(workdir)
  assert sorted(straight_sums) == sorted(resumed_sums) == list(range(n))
  assert [resumed_sums[s] for s in range(n)] == [straight_sums[s] for s in range(n)]
  assert len(set(straight_sums.values())) == n
  import xlm_jax
  a, b = xlm_jax.load(str(straight)), xlm_jax.load(str(workdir))
  diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(np.asarray(x) - np.asarray(y)).max()), a.params,
                                       b.params))
  print("max |parameter difference|:", max(diffs))
  assert max(diffs) <= 1e-6
  assert a.meta["step"] == b.meta["step"] == n


def complete_steps(workdir) -> list[int]:
  root = workdir / "checkpoints"
  return sorted(int(n) for n in os.listdir(root) if n.isdigit()) if root.exists() else []


def saving(workdir) -> bool:
  root = workdir / "checkpoints"
  return root.exists() and any(".orbax-checkpoint-tmp" in n for n in os.listdir(root))


def one_life(workdir, sig, during_save: bool, delay: float, flags) -> tuple[int, str, bool]:
  """Start the run; once it has saved a new checkpoint (or, `during_save`, while an asynchronous save is being
  written) wait `delay` seconds and send `sig`. Returns (exit code, stderr, whether a save was in flight)."""
  env = {**os.environ, "PYTHONPATH": ROOT}
  before = complete_steps(workdir)
  p = subprocess.Popen(command(workdir, flags), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.time() + 1800
  while True:
    assert p.poll() is None, "the run ended before it was interrupted: " + p.stderr.read().decode()[-2000:]
    assert time.time() < deadline
    if during_save and saving(workdir):
      break
    if not during_save and complete_steps(workdir) and complete_steps(workdir)[-1] > (before or [0])[-1]:
      time.sleep(delay)
      break
    time.sleep(0.002 if during_save else 0.02)
  p.send_signal(sig)
  _, err = p.communicate(timeout=600)
  return p.returncode, err.decode(), during_save and saving(workdir)


@pytest.mark.slow
def test_soak_five_random_kills_end_like_an_uninterrupted_run(straight, tmp_path):
  rng = random.Random(11)
  workdir = tmp_path / "soak"
  plan = [(signal.SIGKILL, True)] + [(rng.choice([signal.SIGKILL, signal.SIGTERM]), False) for _ in range(4)]
  plan[1:] = sorted(plan[1:], key=lambda _: rng.random())
  if all(sig == signal.SIGKILL for sig, _ in plan[1:]):
    plan[2] = (signal.SIGTERM, False)
  landed_in_save = False
  for sig, during_save in plan:
    code, err, in_save = one_life(workdir, sig, during_save, rng.uniform(0.0, 0.05), SOAK)
    if sig == signal.SIGKILL:
      assert code == -signal.SIGKILL
      landed_in_save |= in_save
    else:
      assert code == 0, err[-2000:]
      stopped = int(err.split("stop requested (SIGTERM) at step ")[1].split(":")[0])
      assert f"saved step {stopped} to " in err and stopped in complete_steps(workdir)
    print(f"{sig.name}{' during a save' if in_save else ''}: complete checkpoints {complete_steps(workdir)}")
    assert max(complete_steps(workdir) or [0]) < total_steps(), "the run finished before it was killed"
  assert landed_in_save, "no kill landed during an asynchronous save"
  resume_and_compare(straight, workdir, SOAK)
  assert not saving(workdir)  # the interrupted save's temporary directory was removed on restart
