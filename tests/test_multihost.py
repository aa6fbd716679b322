"""Multi-process data: two processes on 127.0.0.1 train exactly like one process, each reading only its rows."""
import json
import os
import subprocess
import sys

import numpy as np
import portpicker

from conftest import ROOT

SCRIPT = os.path.join(ROOT, "tests", "scripts", "multihost_pretrain.py")


def test_two_processes_match_one(tmp_path):
  env = {**os.environ, "PYTHONPATH": ROOT}
  single = subprocess.run([sys.executable, SCRIPT, "0", "1", "0", "4", str(tmp_path / "one"),
                           str(tmp_path / "one.json")], env=env, capture_output=True, text=True, timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]
  port = portpicker.pick_unused_port()
  procs = [subprocess.Popen([sys.executable, SCRIPT, str(i), "2", str(port), "2", str(tmp_path / "two"),
                             str(tmp_path / "two.json")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  one = json.loads((tmp_path / "one.json").read_text())
  two = json.loads((tmp_path / "two.json").read_text())
  assert two["processes"] == 2 and two["devices"] == one["devices"] == 4
  np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)
  assert len(one["losses"]) == 6
  # the checkpoint written by two processes opens like any bundle
  import xlm_jax
  bundle = xlm_jax.load(str(tmp_path / "two"))
  assert bundle.meta["step"] == 6
