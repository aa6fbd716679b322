"""config.host_malloc='keep': freed XLA:CPU buffers stay mapped, so a step's large outputs stop page-faulting."""
from __future__ import annotations

import subprocess
import sys

import pytest

from xlm_jax import host_memory
from xlm_jax.errors import UserError

PROBE = r"""
import resource, sys
from xlm_jax import host_memory
print(host_memory.configure(sys.argv[1]), file=sys.stderr)
import jax, jax.numpy as jnp
f = jax.jit(lambda x: x * 2.0 + 1.0)
x = jnp.ones((8192, 2048), jnp.float32)          # 64 MiB: above glibc's largest mmap threshold
for _ in range(10):                              # warm-up: jax frees a buffer a little after `del`, so the heap
  f(x).block_until_ready()                       # grows for a few calls before freed blocks come round for reuse
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
  y = f(x); y.block_until_ready(); del y        # a fresh output each call, freed before the next
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / 5)
"""


def faults_per_call(mode: str) -> float:
  out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
  return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(host_memory._glibc() is None, reason="mallopt is glibc's; elsewhere host_malloc is a no-op")
def test_keep_stops_each_call_page_faulting_its_fresh_output_back_in():
  pages = 8192 * 2048 * 4 / 4096
  system, keep = faults_per_call("system"), faults_per_call("keep")
  assert system > 0.9 * pages, (system, pages)   # glibc default: unmapped on free, faulted in again
  assert keep < 0.05 * pages, (keep, pages)      # kept mapped: reused without faults


def test_an_unknown_mode_names_the_field_and_the_choices():
  with pytest.raises(UserError, match=r"config.host_malloc='fast'.*'keep'.*'system'"):
    host_memory.configure("fast")


def test_a_call_after_jax_started_its_backends_says_it_is_too_late():
  code = ("import jax; jax.devices(); from xlm_jax import host_memory; print(host_memory.configure('keep'))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
  assert "too late" in out or "not glibc" in out, out
