"""config.host_malloc='keep': freed XLA:CPU buffers stay mapped, so a step's large outputs stop page-faulting."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from xlm_jax import host_memory
from xlm_jax.errors import UserError

PROBE = r"""
import json, resource, sys, time
from xlm_jax import host_memory
print(host_memory.configure(sys.argv[1]), file=sys.stderr)
import jax, jax.numpy as jnp
f = jax.jit(lambda x: x * 2.0 + 1.0)
x = jnp.ones((8192, 2048), jnp.float32)          # 64 MiB: above glibc's largest mmap threshold
faults = []
for _ in range(40):                              # a fresh output each call, freed before the next
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  y = f(x); y.block_until_ready(); del y
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
  time.sleep(0.02)                               # jax frees a buffer a moment after `del`: let it, before the next
print(json.dumps(faults))
"""
PAGES = 8192 * 2048 * 4 // 4096


def faults_per_call(mode: str) -> list[int]:
  out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(host_memory._glibc() is None, reason="mallopt is glibc's; elsewhere host_malloc is a no-op")
def test_keep_stops_each_call_page_faulting_its_fresh_output_back_in():
  """Under glibc's defaults every call faults its 64 MiB output in again; under 'keep' the freed block is reused
  once the heap holds it (the first calls, and the compilation, still grow the heap): the last 10 of 40 calls fault
  < 5% of the pages."""
  system, keep = faults_per_call("system"), faults_per_call("keep")
  assert sorted(system[-10:])[5] > 0.9 * PAGES, (system, PAGES)
  assert max(keep[-10:]) < 0.05 * PAGES, (keep, PAGES)


def test_an_unknown_mode_names_the_field_and_the_choices():
  with pytest.raises(UserError, match=r"config.host_malloc='fast'.*'keep'.*'system'"):
    host_memory.configure("fast")


def test_a_call_after_jax_started_its_backends_says_it_is_too_late():
  code = ("import jax; jax.devices(); from xlm_jax import host_memory; print(host_memory.configure('keep'))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
  assert "too late" in out or "not glibc" in out, out
