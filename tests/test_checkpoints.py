"""Checkpoints that survive damage: interrupted saves, truncated or corrupted files, a full disk, another model's
checkpoint. In-process, on a tiny parameter tree (no training)."""
from __future__ import annotations

import errno
import os

import jax
import numpy as np
import pytest

from xlm_jax import checkpoint as ckpt
from xlm_jax.errors import UserError

PARAMS = {"dense": {"kernel": np.arange(12, dtype=np.float32).reshape(3, 4), "bias": np.ones(4, np.float32)}}
META = {"format": ckpt.BUNDLE_FORMAT, "task": "pretrain"}


def target(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def saved_root(tmp_path, steps=(10, 20)) -> str:
  root = str(tmp_path / "checkpoints")
  c = ckpt.Checkpointer(root, keep=5, async_save=True)
  for step in steps:
    c.save(step, jax.tree.map(lambda x: x + step, PARAMS), META, data={"next_step": step})
  c.close()
  return root


def files_of(directory) -> dict[str, bytes]:
  out = {}
  for base, _, names in os.walk(directory):
    for name in names:
      with open(os.path.join(base, name), "rb") as f:
        out[os.path.relpath(os.path.join(base, name), directory)] = f.read()
  return out


def test_temporary_directories_of_interrupted_saves_are_removed(tmp_path):
  root = saved_root(tmp_path)
  tmp = os.path.join(root, "30.orbax-checkpoint-tmp")
  os.makedirs(os.path.join(tmp, "params"))
  with open(os.path.join(tmp, "params", "half-written"), "wb") as f:
    f.write(b"\0" * 100)
  before = files_of(os.path.join(root, "20"))
  c = ckpt.Checkpointer(root)
  assert not os.path.exists(tmp)
  assert c.latest_step() == 20 and files_of(os.path.join(root, "20")) == before
  c.close()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "meta"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, damage):
  root = saved_root(tmp_path)
  if damage == "meta":
    with open(os.path.join(root, "20", "meta", "metadata"), "w") as f:
      f.write('{"format": ')
  else:
    for base, _, names in os.walk(os.path.join(root, "20", "params")):
      for name in names:
        path = os.path.join(base, name)
        if damage == "truncate":
          os.truncate(path, os.path.getsize(path) // 3)
        else:
          with open(path, "r+b") as f:
            f.write(os.urandom(os.path.getsize(path)))
  c = ckpt.Checkpointer(root)
  step, restored = c.restore_newest(target(PARAMS), None)
  c.close()
  assert step == 10
  np.testing.assert_array_equal(restored["params"]["dense"]["kernel"], PARAMS["dense"]["kernel"] + 10)
  err = capsys.readouterr().out
  assert f"warning: checkpoint step 20 in {root} cannot be restored" in err and "corrupt.20" in err
  assert os.path.isdir(os.path.join(root, "corrupt.20")) and not os.path.exists(os.path.join(root, "20"))
  # the next save of step 20 works (the damaged one is out of the way, not deleted)
  c = ckpt.Checkpointer(root)
  c.save(20, PARAMS, META)
  c.close()
  assert ckpt.all_steps(root) == [10, 20]


def test_checkpoint_of_a_different_model_is_refused_not_set_aside(tmp_path):
  root = saved_root(tmp_path)
  before = files_of(root)
  other = {"dense": {"kernel": np.zeros((3, 5), np.float32), "bias": np.zeros(5, np.float32)}}
  c = ckpt.Checkpointer(root)
  with pytest.raises(UserError, match=r"different model.*dense/kernel: \(3, 4\) vs \(3, 5\)"):
    c.restore_newest(target(other), None)
  c.close()
  assert files_of(root) == before


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES])
def test_failed_save_is_one_sentence_and_earlier_checkpoints_stay(tmp_path, monkeypatch, code):
  """Disk full / permission denied, simulated where Orbax writes (the test runs as root, so a read-only directory
  would not stop it)."""
  root = saved_root(tmp_path)
  before = files_of(root)
  c = ckpt.Checkpointer(root)

  def fail(*args, **kwargs):
    raise RuntimeError("orbax save failed") from OSError(code, os.strerror(code))

  monkeypatch.setattr(c._manager, "save", fail)
  with pytest.raises(UserError) as e:
    c.save(30, PARAMS, META)
  message = str(e.value)
  assert os.strerror(code) in message and "the earlier checkpoints [10, 20] are intact" in message
  assert "\n" not in message
  c.close()
  assert files_of(root) == before
