"""The loader: a Grain `MapDataset` whose element i is this process's batch of step i, built in worker processes,
and the next batches copied to the devices while the current step runs.

  steps start..stop-1 ─► grain.MapDataset.range ─► .map(StepBatch(mixture)) ─► mp_prefetch(workers)
    ─► (step, packed batch) ─► unpack ─► device prefetch (depth `device_prefetch`) ─► the loop

Element i is a pure function of (seed, i, process, row group) (`mixture.Mixture.batch`), so the batches do not
depend on the number of workers, and the iterator's whole state is the next step (saved with the data
fingerprint in every checkpoint; a resumed loader starts its range there). `workers == 0` builds the batches in
one background thread of this process; `workers < 0` means one worker per core available to this process.

A worker that fails ends the run with the worker's error and the step it was building (Grain re-raises it in
this process; `StepBatch` adds the step), never a hang.
Trap: Grain starts its workers with `spawn` and reads absl flags there; the loader marks the flags parsed when
nothing parsed them (tests, notebooks), and the entry point must stay under `if __name__ == "__main__"`.
"""
from __future__ import annotations

import collections
import os
from typing import Any, Iterator

import grain
import numpy as np

from xlm_jax.data.mixture import Mixture


class InputError(RuntimeError):
  """A row builder failed: the message names the step and the original error."""


Layout = tuple  # ((key, field, dtype, shape, offset), ...)


def pack(batch: dict) -> tuple[np.ndarray, Layout]:
  """A nested batch as ONE byte buffer and its layout: a worker hands one array to the training process (Grain
  copies each array into its own shared-memory segment, a cost per array that 14 small arrays per step make
  larger than building the rows)."""
  layout, at = [], 0
  for key in sorted(batch):
    for field in sorted(batch[key]):
      a = np.ascontiguousarray(batch[key][field])
      layout.append((key, field, a.dtype.str, a.shape, at))
      at += a.nbytes
  buffer = np.empty(at, np.uint8)
  for key, field, _, _, offset in layout:
    a = np.ascontiguousarray(batch[key][field])
    buffer[offset:offset + a.nbytes] = a.reshape(-1).view(np.uint8)
  return buffer, tuple(layout)


def unpack(buffer: np.ndarray, layout: Layout) -> dict:
  """The batch `pack` made, as views of `buffer` (no copy)."""
  out: dict = {}
  for key, field, dtype, shape, offset in layout:
    n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    out.setdefault(key, {})[field] = np.asarray(buffer[offset:offset + n]).view(dtype).reshape(shape)
  return out


class StepBatch:
  """step -> (step, this process's batch of that step, packed: `pack`). Picklable: workers receive it."""

  def __init__(self, mixture: Mixture):
    self.mixture = mixture

  def __call__(self, step: int) -> tuple[int, np.ndarray, Layout]:
    step = int(step)
    try:
      return (step, *pack(self.mixture.batch(step)))
    except Exception as e:  # noqa: BLE001: re-raised with the step, whatever it was
      raise InputError(f"the input pipeline failed building the batch of step {step} (process "
                       f"{self.mixture.process_index}, pid {os.getpid()}): {type(e).__name__}: {e}") from e


def _worker_init(worker_index: int, worker_count: int) -> None:
  """In each worker: die with the training process (Linux: PR_SET_PDEATHSIG). Trap: without it, workers of a
  killed run (SIGKILL, OOM, preemption) outlive it, holding its stdout/stderr pipes open, so whoever waits for the
  run's output waits forever."""
  import ctypes
  import signal
  try:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
  except OSError:  # not Linux: workers notice the closed queue instead
    pass


def available_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def resolve_workers(workers: int) -> int:
  return available_cores() if workers < 0 else int(workers)


def step_dataset(mixture: Mixture, start: int, stop: int) -> grain.MapDataset:
  """Element k: (start + k, batch of that step)."""
  return grain.MapDataset.range(start, stop).map(StepBatch(mixture))


def host_batches(mixture: Mixture, start: int, stop: int, workers: int, buffer: int = 2) -> grain.IterDataset:
  """(step, packed batch, layout) for steps start..stop-1, built by `workers` processes (0: one thread here)."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  ds = step_dataset(mixture, start, stop).to_iter_dataset(
      grain.ReadOptions(num_threads=1 if workers == 0 else 0, prefetch_buffer_size=buffer if workers == 0 else 0))
  if workers > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=buffer),
                        worker_init_fn=_worker_init)
  return ds


class Loader:
  """Yields (step, local numpy batch, global device batch or None) from `start` to `stop`; `state()` is what a
  checkpoint stores. With a `mesh`, the next `device_prefetch` batches are already on their way to the devices
  (`jax.make_array_from_process_local_data` copies asynchronously) while the caller runs the current step."""

  def __init__(self, mixture: Mixture, start: int, stop: int, *, workers: int = 0, mesh=None,
               device_prefetch: int = 2):
    self._mixture = mixture
    self._next = start
    self._mesh = mesh
    self._depth = max(int(device_prefetch), 1)
    self.workers = resolve_workers(workers)
    self._it = iter(host_batches(mixture, start, stop, self.workers)) if stop > start else iter(())
    self._ahead: collections.deque = collections.deque()

  def _pull(self) -> bool:
    try:
      step, buffer, layout = next(self._it)
    except StopIteration:
      return False
    local = unpack(buffer, layout)
    device = None
    if self._mesh is not None:
      from xlm_jax import parallel
      device = parallel.global_batch(local, self._mesh)
    self._ahead.append((step, local, device))
    return True

  def __iter__(self) -> Iterator:
    return self

  def __next__(self) -> tuple[int, dict, Any]:
    while len(self._ahead) < self._depth and self._pull():
      pass
    if not self._ahead:
      raise StopIteration
    item = self._ahead.popleft()
    self._next = item[0] + 1
    return item

  def state(self) -> dict:
    """The next step to produce and the fingerprint of the data settings."""
    return {"next_step": self._next, "fingerprint": self._mixture.fingerprint()}

  def close(self) -> None:
    self._ahead.clear()
    close = getattr(self._it, "close", None)
    if close is not None:
      close()

