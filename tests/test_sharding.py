"""Training on 8 fake CPU devices (data=2, fsdp=2, tensor=2) follows the one-device loss curve, and the parameters
and optimizer moments really are sharded."""
import json
import os
import subprocess
import sys

import numpy as np

from conftest import ROOT

SCRIPT = os.path.join(ROOT, "tests", "scripts", "train_on_mesh.py")


def run_on_mesh(tmp_path, name, data, fsdp, tensor):
  workdir, out = tmp_path / name, tmp_path / f"{name}.json"
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])}
  proc = subprocess.run([sys.executable, SCRIPT, str(workdir), str(out), str(data), str(fsdp), str(tensor)],
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(out.read_text())


def test_sharded_training_matches_one_device(tmp_path):
  one = run_on_mesh(tmp_path, "one", 1, 1, 1)
  eight = run_on_mesh(tmp_path, "eight", 2, 2, 2)
  assert len(one["losses"]) == len(eight["losses"]) == 20
  a, b = np.array(one["losses"]), np.array(eight["losses"])
  rel = np.abs(a - b) / np.abs(a)
  print("max relative loss difference over 20 steps:", rel.max())
  assert rel.max() <= 1e-4
  assert a[-1] < a[0]  # it is learning, so the comparison is not between two flat lines

  assert eight["n_devices"] == 8
  # embedding [vocab, embed] -> ('tensor', 'fsdp'); q kernel [embed, heads, kv] -> ('fsdp', 'tensor', None)
  assert eight["embedding_spec"][:2] == ["tensor", "fsdp"]
  v, d = eight["embedding_shape"]
  assert eight["embedding_shard_shape"] == [v // 2, d // 2]
  assert eight["q_spec"][:2] == ["fsdp", "tensor"]
  assert eight["q_shard_shape"][0] == eight["q_shape"][0] // 2 and eight["q_shard_shape"][1] == eight["q_shape"][1] // 2
  assert eight["adam_mu_spec"][:2] == ["tensor", "fsdp"]
  assert one["embedding_shard_shape"] == one["embedding_shape"]
