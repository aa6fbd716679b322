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


TRIM_PROBE = r"""
import sys
from xlm_jax import host_memory
print(host_memory.configure(sys.argv[1]), file=sys.stderr)
import ctypes
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
vm = lambda: int(open("/proc/self/statm").read().split()[0]) * 4096   # mapped, not touched: no memory is used
before = vm()
block = libc.malloc(3 << 30)    # 3 GiB, never written to
grown = vm()
libc.free(block)
print(before, grown, vm())
"""


@pytest.mark.skipif(host_memory._glibc() is None, reason="mallopt is glibc's; elsewhere host_malloc is a no-op")
def test_keep_never_trims_the_heap_even_after_a_free_above_2_gib():
  """A larger model's step frees more than 2 GiB at once; with a finite trim threshold (mallopt takes an int, at
  most 2**31 - 1) glibc gave that back to the system and the next step faulted it all in again. 'keep' disables
  trimming (-1): the heap keeps the freed 3 GiB mapped; the glibc default returns it."""
  def sizes(mode: str) -> list[int]:
    out = subprocess.run([sys.executable, "-c", TRIM_PROBE, mode], capture_output=True, text=True, check=True)
    return [int(v) for v in out.stdout.split()]
  before, grown, after = sizes("keep")
  # The heap may already hold a little free space at its top, which the 3 GiB block reuses (CI saw it grow by
  # 3 GiB - 32 KiB): the block must have grown the mapping by nearly all of it, and the free must keep every byte.
  assert grown - before >= (3 << 30) - (1 << 20) and after == grown, (before, grown, after)
  before, grown, after = sizes("system")  # glibc's own choice: a block this large is an mmap, unmapped on free
  assert after < grown - (2 << 30), (before, grown, after)


def test_an_unknown_mode_names_the_field_and_the_choices():
  with pytest.raises(UserError, match=r"config.host_malloc='fast'.*'keep'.*'system'"):
    host_memory.configure("fast")


def test_a_call_after_jax_started_its_backends_says_it_is_too_late():
  code = ("import jax; jax.devices(); from xlm_jax import host_memory; print(host_memory.configure('keep'))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
  assert "too late" in out or "not glibc" in out, out
