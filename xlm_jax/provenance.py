"""Where a published figure came from: the command, the git commit, the machine and the JAX version.

Every benchmark script puts `provenance()` into the JSON it writes, so a figure in the docs can be traced to the
code and the hardware that produced it (a CPU's AVX-512 BF16 support alone changes bfloat16 speed several-fold).
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# What a benchmark writes, not code: changes here do not make a figure one of uncommitted code. (A script that
# writes several results in a row would otherwise mark every run after the first `+dirty`.)
OUTPUT_PATHS = ("benchmarks/results/", "docs/")


def git_commit(repo: str = REPO) -> str | None:
  """HEAD of the repository holding this package, with `+dirty` when tracked files other than benchmark outputs
  (`OUTPUT_PATHS`) differ from it; None outside git."""
  try:
    head = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    status = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                            text=True, check=True)
  except (OSError, subprocess.CalledProcessError):
    return None
  changed = [line[3:] for line in status.stdout.splitlines() if line.strip()]
  dirty = [path for path in changed if not path.startswith(OUTPUT_PATHS)]
  return head.stdout.strip() + ("+dirty" if dirty else "")


def machine() -> dict:
  """CPU model, core count, the AVX-512 flags that matter for bfloat16, the platform and the JAX devices."""
  model, flags = platform.processor() or platform.machine(), ""
  if os.path.exists("/proc/cpuinfo"):
    for line in open("/proc/cpuinfo"):
      if line.startswith("model name") and model in ("", platform.machine()):
        model = line.split(":", 1)[1].strip()
      elif line.startswith("flags") and not flags:
        flags = line.split(":", 1)[1]
  flags = set(flags.split())
  import jax
  return {"cpu": model, "cores": os.cpu_count(), "avx512f": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags,
          "amx_bf16": "amx_bf16" in flags,
          "platform": platform.platform(), "python": platform.python_version(), "jax": jax.__version__,
          "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}"}


def provenance(argv: list[str] | None = None) -> dict:
  """{'command', 'git_commit', 'machine'} for the running script (`argv` defaults to sys.argv)."""
  argv = sys.argv if argv is None else argv
  script = os.path.relpath(os.path.abspath(argv[0]), REPO) if argv and argv[0].endswith(".py") else (argv or [""])[0]
  return {"command": " ".join(["python", script, *argv[1:]]).strip(), "git_commit": git_commit(),
          "machine": machine()}
