"""Distributed start-up and mesh presets: cluster detection, one-sentence errors, the coordinator time-out."""
import os
import subprocess
import sys

import jax
import pytest

from conftest import ROOT
from xlm_jax import parallel
from xlm_jax.errors import UserError


def test_cluster_detection(tmp_path):
  no_pci = str(tmp_path / "none")
  assert parallel.cluster_kind("", {}, no_pci) == ""
  assert parallel.cluster_kind("10.0.0.1:1234", {}, no_pci) == "explicit"
  assert parallel.cluster_kind("", {"JAX_COORDINATOR_ADDRESS": "h:1"}, no_pci) == "explicit"
  assert parallel.cluster_kind("", {"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, no_pci) == ""  # one task
  assert parallel.cluster_kind("", {"SLURM_NTASKS": "32", "SLURM_PROCID": "3"}, no_pci) == "slurm"
  assert parallel.cluster_kind("", {"TPU_WORKER_HOSTNAMES": "a,b,c,d"}, no_pci) == "cloud_tpu"
  # a TPU VM without any pod variable: TPU chips on the PCI bus (Google's vendor id)
  for name, vendor in (("0000:00:04.0", "0x1ae0"), ("0000:00:05.0", "0x8086")):
    os.makedirs(tmp_path / "pci" / name)
    (tmp_path / "pci" / name / "vendor").write_text(vendor + "\n")
  assert parallel.cluster_kind("", {}, str(tmp_path / "pci")) == "cloud_tpu"
  assert parallel.expected_process_count("cloud_tpu", {"TPU_WORKER_HOSTNAMES": "a,b,c,d"}) == 4
  assert parallel.expected_process_count("slurm", {"SLURM_NTASKS": "32"}) == 32


def test_bad_distributed_settings_are_one_sentence(monkeypatch):
  for var in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "SLURM_PROCID", "TPU_WORKER_HOSTNAMES",
              "MEGASCALE_COORDINATOR_ADDRESS"):
    monkeypatch.delenv(var, raising=False)
  with pytest.raises(UserError, match=r"the slurm cluster runs 32 processes"):
    parallel.initialize_distributed("", 8, -1, env={"SLURM_NTASKS": "32", "SLURM_PROCID": "0"})
  with pytest.raises(UserError, match=r"process_id=2 is outside 0\.\.1"):
    parallel.initialize_distributed("127.0.0.1:1234", 2, 2)
  with pytest.raises(UserError, match=r"needs config.distributed.num_processes and process_id"):
    parallel.initialize_distributed("127.0.0.1:1234", 0, -1)
  with pytest.raises(UserError, match=r"num_processes=4 but no cluster was detected"):
    parallel.initialize_distributed("", 4, -1, env={})


def test_unreachable_coordinator_times_out_naming_the_address():
  import portpicker
  port = portpicker.pick_unused_port()
  code = ("from xlm_jax import parallel; "
          f"parallel.initialize_distributed('127.0.0.1:{port}', 2, 1, timeout_s=3)")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: the JAX coordinator at 127.0.0.1:{port} was not reached") and "within 3 s" in last


def test_presets_fill_the_mesh():
  assert parallel.mesh_shape({"preset": "dp"}, 256, 4) == (256, 1, 1)
  assert parallel.mesh_shape({"preset": "fsdp"}, 32, 4) == (1, 32, 1)
  assert parallel.mesh_shape({"preset": "fsdp_tp"}, 32, 4) == (1, 8, 4)
  assert parallel.mesh_shape({"preset": "fsdp_tp"}, 16, 8) == (1, 4, 4)
  assert parallel.mesh_shape({"preset": "fsdp_tp", "tensor": 2}, 16, 8) == (1, 8, 2)
  assert parallel.mesh_shape({"preset": "", "data": 2, "fsdp": -1, "tensor": 1}, 8) == (2, 4, 1)
  with pytest.raises(UserError, match=r"preset='zero3' is not one of"):
    parallel.mesh_shape({"preset": "zero3"}, 8)
  with pytest.raises(UserError, match=r"needs 16 devices, but 4 are available"):
    parallel.mesh_shape({"data": 4, "fsdp": 4, "tensor": 1}, 4)
  with pytest.raises(UserError, match=r"does not divide the 6 devices"):
    parallel.mesh_shape({"data": -1, "fsdp": 4, "tensor": 1}, 6)


def test_batch_check_and_topology_summary():
  mesh = parallel.make_mesh({"preset": "dp"}, jax.devices()[:1])
  parallel.check_batch(8, mesh, 2)
  with pytest.raises(UserError, match=r"config.data.batch_size=7 is not divisible by 2 .* use e.g. 8"):
    parallel.check_batch(7, mesh, 2)
  text = parallel.topology_summary(mesh, 8, 2)
  assert text.startswith("topology: 1 process(es), ") and "mesh {'data': 1, 'fsdp': 1, 'tensor': 1}" in text
  assert "batch 8 rows global, 8 per process, 8 per device (4 per micro-batch of 2)" in text
