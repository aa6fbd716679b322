"""The loader: a Grain `MapDataset` whose element i is this process's batch of step i, built in worker processes,
and the next batches copied to the devices while the current step runs.

  steps start..stop-1 ─► grain.MapDataset.range(start, stop, chunk) ─► .map(StepChunk(mixture)) ─► mp_prefetch
    ─► (first step, packed batches of `chunk` steps) ─► unpack ─► device prefetch (depth `device_prefetch`) ─► loop

The batch of step i is a pure function of (seed, i, process, row group) (`mixture.Mixture.batch`), so the batches
do not depend on the number of workers or on the chunking, and the iterator's whole state is the next step (saved
with the data fingerprint in every checkpoint; a resumed loader starts its range there). One Grain element
carries `chunk` consecutive steps in one buffer: handing an element from a worker to this process has a fixed
cost (shared memory, a queue, pickling the layout) of about a millisecond on our CPUs, as much as building a demo
batch, and a chunk pays it once for several steps. `workers == 0` builds the batches in
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


Layout = tuple  # ((batch index, key, field, dtype, shape, offset), ...)
DEFAULT_STEPS_PER_ELEMENT = 16  # steps per Grain element (config.data.steps_per_element)


def pack(batches: list[dict]) -> tuple[np.ndarray, Layout]:
  """Nested batches as ONE byte buffer and its layout: a worker hands one array to the training process (Grain
  copies each array into its own shared-memory segment, a cost per array that 14 small arrays per step make
  larger than building the rows)."""
  layout, at = [], 0
  for i, batch in enumerate(batches):
    for key in sorted(batch):
      for field in sorted(batch[key]):
        a = np.ascontiguousarray(batch[key][field])
        layout.append((i, key, field, a.dtype.str, a.shape, at))
        at += a.nbytes
  buffer = np.empty(at, np.uint8)
  for i, key, field, _, _, offset in layout:
    a = np.ascontiguousarray(batches[i][key][field])
    buffer[offset:offset + a.nbytes] = a.reshape(-1).view(np.uint8)
  return buffer, tuple(layout)


def unpack(buffer: np.ndarray, layout: Layout) -> list[dict]:
  """The batches `pack` made, as views of `buffer` (no copy; each view keeps `buffer` alive)."""
  out: list[dict] = []
  for i, key, field, dtype, shape, offset in layout:
    while len(out) <= i:
      out.append({})
    out[i].setdefault(key, {})[field] = np.ndarray(shape, dtype=dtype, buffer=buffer, offset=offset)
  return out


class StepChunk:
  """first step -> (first step, this process's batches of steps first..first+chunk-1 (not past `stop`), packed
  with `pack`). Picklable: workers receive it."""

  def __init__(self, mixture: Mixture, chunk: int, stop: int):
    self.mixture, self.chunk, self.stop = mixture, int(chunk), int(stop)

  def __call__(self, first: int) -> tuple[int, np.ndarray, Layout]:
    first, batches = int(first), []
    for step in range(first, min(first + self.chunk, self.stop)):
      try:
        batches.append(self.mixture.batch(step))
      except Exception as e:  # noqa: BLE001: re-raised with the step, whatever it was
        raise InputError(f"the input pipeline failed building the batch of step {step} (process "
                         f"{self.mixture.process_index}, pid {os.getpid()}): {type(e).__name__}: {e}") from e
    return (first, *pack(batches))


def _worker_init(worker_index: int, worker_count: int) -> None:
  """In each worker: die with the training process (Linux: PR_SET_PDEATHSIG), keep freed memory mapped. Trap: without it, workers of a
  killed run (SIGKILL, OOM, preemption) outlive it, holding its stdout/stderr pipes open, so whoever waits for the
  run's output waits forever."""
  import ctypes
  import signal
  try:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
  except OSError:  # not Linux: workers notice the closed queue instead
    pass
  # a worker allocates the same few hundred KB of rows and packed buffer every step: keep them mapped instead of
  # page-faulting fresh ones in each time (xlm_jax/host_memory.py; no jax computation runs in a worker)
  from xlm_jax import host_memory
  host_memory.keep_freed_blocks()


def available_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def resolve_workers(workers: int) -> int:
  return available_cores() if workers < 0 else int(workers)


def step_dataset(mixture: Mixture, start: int, stop: int, chunk: int = 1) -> grain.MapDataset:
  """Element k: (start + k * chunk, packed batches of that step and the chunk - 1 after it, up to stop - 1)."""
  return grain.MapDataset.range(start, stop, chunk).map(StepChunk(mixture, chunk, stop))


def host_batches(mixture: Mixture, start: int, stop: int, workers: int, buffer: int = 2,
                 chunk: int = 1) -> grain.IterDataset:
  """(first step, packed batches, layout) for steps start..stop-1 in chunks of `chunk` steps, built by `workers`
  processes (0: one thread here)."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  ds = step_dataset(mixture, start, stop, chunk).to_iter_dataset(
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
               device_prefetch: int = 2, steps_per_element: int = DEFAULT_STEPS_PER_ELEMENT):
    self._mixture = mixture
    self._next = start
    self._mesh = mesh
    self._depth = max(int(device_prefetch), 1)
    self.workers = resolve_workers(workers)
    chunk = max(int(steps_per_element), 1)
    self._it = iter(host_batches(mixture, start, stop, self.workers, chunk=chunk)) if stop > start else iter(())
    self._host: collections.deque = collections.deque()  # (step, local batch) unpacked, not yet on the devices
    self._ahead: collections.deque = collections.deque()

  def _pull(self) -> bool:
    if not self._host:
      try:
        first, buffer, layout = next(self._it)
      except StopIteration:
        return False
      self._host.extend(enumerate(unpack(buffer, layout), start=first))
    step, local = self._host.popleft()
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
    self._host.clear()
    close = getattr(self._it, "close", None)
    if close is not None:
      close()

