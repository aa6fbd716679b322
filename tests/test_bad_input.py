"""The bad-input matrix of issue #11, the rows no other file covers: each asserts the one-sentence message and that
nothing was lost or overwritten. (Rows covered elsewhere: empty corpus, missing file, unknown language, unknown
config field, a checkpoint of a different model -> test_cli_errors.py; non-UTF-8 bytes -> test_data_errors.py; a
damaged checkpoint, a full disk -> test_checkpoints.py; NMT lengths above the position table -> test_nmt.py; a NaN
inside the step -> test_training_math.py.)"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, run_main, tiny_config
from xlm_jax.errors import UserError


def cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *args], cwd=ROOT, capture_output=True,
                        text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)


def error_line(proc) -> str:
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1, proc.stderr[-2000:]
  return lines[0]


@pytest.mark.parametrize("args, expected", [
    ([], "--config is required, e.g. --config=configs/demo.py"),
    (["--config=configs/demo.py:nosuch"], "unknown variant 'nosuch'; choose demo, pretrain or nmt"),
    (["--config=configs/xlm_paper.py:base"], "unknown variant 'base'; choose one of"),
    (["--config=configs/nosuch.py"], "No such file or directory"),
    (["--config=configs/demo.py", "--config.train.steps=abc"], "--config.train.steps=abc"),
    (["--config=configs/demo.py", "--config.data.batch_size=[1]"], "--config.data.batch_size"),
])
def test_config_mistakes_are_one_sentence(tmp_path, args, expected):
  line = error_line(cli(*args, f"--workdir={tmp_path / 'w'}"))
  assert expected in line
  assert not (tmp_path / "w").exists()


def test_workdir_that_cannot_be_a_directory(tmp_path):
  blocker = tmp_path / "a-file"
  blocker.write_text("mine")
  line = error_line(cli("--config=configs/demo.py", f"--workdir={blocker / 'run'}"))
  assert f"{blocker} is a file" in line
  assert blocker.read_text() == "mine"


def unwritable_directory(tmp_path) -> str:
  """A directory this process cannot create entries in: mode 0555 for an ordinary user; for root (whom modes do
  not stop) /sys, which refuses new entries to everyone."""
  if os.geteuid() != 0:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    return str(locked)
  try:
    os.mkdir("/sys/xlm_jax_probe")
  except OSError:
    return "/sys"
  os.rmdir("/sys/xlm_jax_probe")
  pytest.skip("running as root on a machine whose /sys accepts new directories: no unwritable directory to use")


def test_unwritable_workdir_is_one_sentence(tmp_path):
  parent = unwritable_directory(tmp_path)
  before = sorted(os.listdir(parent))
  line = error_line(cli("--config=configs/demo.py", f"--workdir={parent}/run"))
  assert f"--workdir={parent}/run is not writable" in line and "choose another --workdir" in line
  assert sorted(os.listdir(parent)) == before  # the probe left nothing behind


def build(tmp_path, **overrides):
  from xlm_jax import parallel
  from xlm_jax.train import pretrain
  config = tiny_config(**overrides)
  return pretrain.build_task(config, str(tmp_path), parallel.make_mesh(config.mesh.to_dict()))


@pytest.mark.parametrize("overrides, expected", [
    ({"data.languages": "xa,xb,xa"}, "config.data.languages='xa,xb,xa' names 'xa' more than once"),
    ({"data.bptt": 600}, "config.data.bptt=600 exceeds config.model.max_positions=512"),
    ({"train.accumulate_gradients": 3}, "config.data.batch_size=8 is not divisible by 3"),
    ({"data.vocab_size": 8}, "could not train a 8-token vocabulary"),
])
def test_pretraining_settings_refused_before_writing(tmp_path, overrides, expected):
  workdir = tmp_path / "w"
  with pytest.raises(UserError, match=expected.replace("[", r"\[").replace("(", r"\(")):
    build(workdir, **overrides)
  assert not (workdir / "tokenizer.json").exists() and not (workdir / "checkpoints").exists()


def test_another_runs_tokenizer_in_the_workdir_is_not_reused(tmp_path):
  """A stale tokenizer.json (another vocabulary size) was silently reused; now refused, and left as it was."""
  build(tmp_path / "first")
  stale = (tmp_path / "first" / "tokenizer.json").read_bytes()
  second = tmp_path / "second"
  second.mkdir()
  shutil.copy(tmp_path / "first" / "tokenizer.json", second / "tokenizer.json")
  with pytest.raises(UserError, match=r"is another run's tokenizer \(vocab_size 300.*asks for vocab_size 280"):
    build(second, **{"data.vocab_size": 280})
  assert (second / "tokenizer.json").read_bytes() == stale
  with pytest.raises(UserError, match=r"languages \['xa', 'xb', 'xc'\].*languages \['xa', 'xb'\]"):
    build(second, **{"data.languages": "xa,xb", "data.mlm_steps": "xa,xb"})


def test_nan_with_nonfinite_stop_exits_naming_step_objective_and_batch(tmp_path):
  """A NaN learning rate makes the first update non-finite: with config.train.nonfinite='stop' the run exits 2 with
  a diagnostic naming the step and the batch checksum, and no checkpoint with non-finite parameters exists."""
  proc = run_main(str(tmp_path), {"train.lr": "nan", "train.schedule": "constant", "train.nonfinite": "stop",
                                  "train.steps": 6, "checkpoint.every": 2})
  line = error_line(proc)
  assert "step 0: non-finite loss, gradient or learning rate" in line and "batch checksum" in line
  assert "config.train.nonfinite='stop'" in line
  root = tmp_path / "checkpoints"
  assert not root.exists() or not [n for n in os.listdir(root) if n.isdigit()]
