"""How the process's C allocator (glibc malloc) treats large freed blocks: give them back, or keep them mapped.

XLA:CPU allocates every step's large temporaries (the vocabulary logits, the embedding's gradient, the bfloat16
copies of the weights) with `posix_memalign`. glibc serves a block over its mmap threshold (at most 32 MiB), and
any large block requested from a worker thread's arena, with a fresh `mmap`, and `free` unmaps it: every step then
page-faults all its temporaries back in, one 4 KiB page at a time (a 131 MB buffer is 32,000 faults, which took
longer than the work written into it; `tests/test_host_memory.py` counts the faults, docs/benchmarks.md has the
step times under each setting). PyTorch's CPU allocator goes through the same `posix_memalign`, so a process that
holds both (the benchmarks) speeds up both.

`keep_freed_blocks()` sets three glibc options: one arena (worker-thread arenas fall back to `mmap` for blocks
larger than their 64 MiB heaps whatever the threshold), no `mmap` for large blocks, and no trimming of the heap's
top (threshold -1, "never": the largest finite one, 2**31 - 1, still let a step that frees more than 2 GiB at
once, as configs/multi30k.py:small's does, hand it back and fault it all in again on the next step). It must run before jax starts its backends: a thread that has already allocated keeps its own arena, so a
late call changes nothing for XLA's threads (it says so instead). `xlm-jax train` / `main.py` apply
`config.host_malloc` before anything touches a device.
The traps: the process's resident memory stays at its peak (freed blocks are reused, not returned), which is what
a training process wants and a long-lived notebook kernel that trains once and then does other work may not; and
with one arena, every thread of the process shares one heap, so another framework's allocations in the same
process (PyTorch in the benchmarks) interleave with XLA's and can slow it. `config.host_malloc='system'` leaves
glibc's defaults alone. Elsewhere than glibc (macOS, musl) it is a no-op and says so.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import warnings

from xlm_jax.errors import UserError

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
MODES = ("keep", "system")


@functools.lru_cache(maxsize=1)
def _glibc():
  """The process's glibc, or None elsewhere."""
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.gnu_get_libc_version.restype = ctypes.c_char_p  # only glibc has it
    libc.gnu_get_libc_version()
    return libc
  except (OSError, AttributeError):
    return None


def _xla_started() -> bool:
  """Whether jax's backends (XLA:CPU's thread pool) exist already; False where jax cannot tell."""
  try:
    from jax._src import xla_bridge
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):
    return False


def keep_freed_blocks() -> str:
  """Make glibc keep freed blocks mapped for reuse (see the module docstring); returns what was done, one line."""
  libc = _glibc()
  if libc is None:
    return "host_malloc=keep: not glibc, nothing changed"
  if _xla_started():
    warnings.warn("config.host_malloc='keep' came after jax started its backends and changes nothing for XLA's "
                  "threads; apply it before the first jax computation", stacklevel=2)
    return ("host_malloc=keep: too late, XLA's CPU threads already run with their own arenas (whose large blocks "
            "are mmapped whatever the settings); call it before the first jax computation or jax.devices()")
  ok = [libc.mallopt(M_ARENA_MAX, 1), libc.mallopt(M_MMAP_MAX, 0), libc.mallopt(M_TRIM_THRESHOLD, -1)]
  if not all(ok):
    return f"host_malloc=keep: glibc refused some options (mallopt returned {ok})"
  return "host_malloc=keep: glibc keeps freed blocks mapped (one arena, no mmap, no trim)"


def configure(mode: str) -> str:
  """Apply `config.host_malloc` ('keep' | 'system'); returns the one-line description."""
  if mode == "keep":
    return keep_freed_blocks()
  if mode == "system":
    return "host_malloc=system: glibc defaults"
  raise UserError(f"config.host_malloc={mode!r} is not one of {MODES}: 'keep' keeps freed host memory mapped "
                   "(faster CPU steps, resident memory stays at its peak), 'system' leaves the C allocator alone")
