"""The launchers: every command they would run, printed by --dry-run, and clean under shellcheck."""
import os
import shutil
import subprocess

import pytest

from conftest import ROOT

LAUNCH = os.path.join(ROOT, "launch")
SCRIPTS = ("local_multiprocess.sh", "tpu_pod.sh", "slurm_gpu.sbatch")


def dry_run(script: str, *args: str, **env) -> subprocess.CompletedProcess:
  clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TPU_"))}
  return subprocess.run(["bash", os.path.join(LAUNCH, script), *args], env={**clean, **env}, capture_output=True,
                        text=True, timeout=60)


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck is not installed (apt-get install shellcheck); the launchers are not linted")
@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_clean(script):
  proc = subprocess.run(["shellcheck", "--shell=bash", os.path.join(LAUNCH, script)], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout


def test_local_multiprocess_dry_run():
  proc = dry_run("local_multiprocess.sh", "--dry-run", "--port", "12345", "3", "2", "--config=configs/demo.py",
                 "--workdir=runs/a b")
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  starts = [l for l in lines if "main.py" in l]
  assert len(starts) == 3
  for i, line in enumerate(starts):
    assert "--xla_force_host_platform_device_count=2" in line and "127.0.0.1:12345" in line
    assert f"--config.distributed.process_id={i}" in line and "--config.distributed.num_processes=3" in line
    assert r"--workdir=runs/a\ b" in line and line.endswith(f"> logs/local_multiprocess/process{i}.log 2>&1 &")
  bad = dry_run("local_multiprocess.sh", "--dry-run", "two", "2")
  assert bad.returncode == 2 and "must be positive integers" in bad.stderr


def test_tpu_pod_dry_run():
  env = dict(TPU_NAME="xnli15", ZONE="us-central2-b", ACCELERATOR="v4-32")
  proc = dry_run("tpu_pod.sh", "--dry-run", "run", "--config=configs/xlm_paper.py:xlm_mlm_tlm_xnli15_1024",
                 "--workdir=gs://bucket/runs/xnli15", **env)
  assert proc.returncode == 0, proc.stderr
  out = proc.stdout
  assert "gcloud compute tpus tpu-vm describe xnli15 --zone us-central2-b" in out
  assert "gcloud compute tpus tpu-vm create xnli15 --zone us-central2-b --accelerator-type v4-32" in out
  tar = next(l for l in out.splitlines() if l.startswith("tar "))
  assert all(x in tar for x in ("--exclude=./.git", "'--exclude=./.venv*'", "--exclude=./runs"))
  assert "tpu-vm scp" in out and "--worker=all" in out
  assert "python3.11 -m venv .venv" in out and "-r requirements.txt -r requirements-tpu.txt" in out
  assert ("nohup .venv/bin/python main.py --config=configs/xlm_paper.py:xlm_mlm_tlm_xnli15_1024 "
          "--workdir=gs://bucket/runs/xnli15 > logs/$(hostname).log") in out
  queued = dry_run("tpu_pod.sh", "--dry-run", "run", "--workdir=gs://b/r", QUEUED="1", **env)
  assert "gcloud compute tpus queued-resources create xnli15 --node-id xnli15" in queued.stdout
  for command, expected in (("status", "kill -0"), ("logs", "--worker=0"), ("stop", "kill -TERM"),
                            ("delete", "tpu-vm delete xnli15")):
    proc = dry_run("tpu_pod.sh", "--dry-run", command, **env)
    assert proc.returncode == 0 and expected in proc.stdout, (command, proc.stdout, proc.stderr)
  bad = dry_run("tpu_pod.sh", "--dry-run", "start", **env)
  assert bad.returncode == 2 and bad.stderr.startswith("error: unknown command 'start'")
  missing = dry_run("tpu_pod.sh", "--dry-run", "status")
  assert missing.returncode != 0 and "TPU_NAME" in missing.stderr


def test_slurm_dry_run():
  proc = dry_run("slurm_gpu.sbatch", "--dry-run", "--config=configs/xlm_paper.py:xlm_mlm_100_1280",
                 "--workdir=/shared/runs/xlm100", NODES="4")
  assert proc.returncode == 0, proc.stderr
  out = proc.stdout
  assert "sbatch --nodes=4 launch/slurm_gpu.sbatch --config=configs/xlm_paper.py:xlm_mlm_100_1280" in out
  assert "4 nodes x 8 GPUs = 32 processes" in out and "source .venv/bin/activate" in out
  assert "srun --kill-on-bad-exit=1 --ntasks-per-node=8 --gpus-per-node=8" in out and "python main.py" in out
  header = open(os.path.join(LAUNCH, "slurm_gpu.sbatch")).read()
  assert "#SBATCH --requeue" in header and "#SBATCH --signal=B:USR1@300" in header
  assert "scontrol requeue" in header
