"""What every side-by-side benchmark records: the machine, the code, the command, and the measured matmul peak.

Imported by benchmarks/train_step.py, equal_loss.py, epoch.py and gpu_benchmarks.py (run as scripts from the
repository root; this directory is not a package).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import platform
import sys
import time
import traceback

import jax

from xlm_jax import provenance as provenance_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_info() -> dict:
  """CPU model and the flags that decide bf16 speed (AVX-512 BF16 / AMX), from `xlm_jax.provenance`."""
  m = provenance_lib.machine()
  return {"model": m["cpu"], "cpus": m["cores"], "avx512f": m["avx512f"], "avx512_bf16": m["avx512_bf16"],
          "amx_bf16": m["amx_bf16"]}


def git_commit() -> str:
  """HEAD of the repository, with '+dirty' when tracked files differ from it (figures of uncommitted code)."""
  return provenance_lib.git_commit(ROOT) or "unknown"


def versions() -> dict:
  out = {"python": platform.python_version(), "jax": jax.__version__}
  for name in ("jaxlib", "flax", "optax", "torch", "transformers"):
    try:
      out[name] = __import__(name).__version__
    except ImportError:
      pass
  return out


def cpu_jiffies() -> dict[str, int]:
  """Machine-wide CPU time so far (/proc/stat, in clock ticks): all of it, and the share the hypervisor took."""
  try:
    with open("/proc/stat") as f:
      fields = [int(x) for x in f.readline().split()[1:]]
  except (OSError, ValueError):
    return {}
  # user nice system idle iowait irq softirq steal [guest guest_nice, already counted in user/nice]
  return {"total": sum(fields[:8]), "steal": fields[7] if len(fields) > 7 else 0}


def provenance() -> dict:
  """command, git commit, date, machine and versions: the fields docs/benchmarks.md prints under each table."""
  device = jax.devices()[0]
  return {"command": "python " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
          "git_commit": git_commit(), "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
          "machine": {"cpu": cpu_info(), "platform": platform.platform(), "jax_backend": jax.default_backend(),
                      "device": f"{jax.device_count()} x {device.device_kind}"},
          "versions": versions(), "load_average_start": list(os.getloadavg()), "cpu_jiffies_start": cpu_jiffies()}


def write_json(path: str, result: dict) -> None:
  """Write `result` (with the load average at the end of the run added) as indented JSON.

  With `cpu_jiffies_start` (from `provenance`), `cpu_steal_share` is the share of the machine's CPU time during
  the run that a hypervisor gave to other guests: on a shared VM, step times swing with it.
  """
  result["load_average_end"] = list(os.getloadavg())
  start, end = result.get("cpu_jiffies_start") or {}, cpu_jiffies()
  if start and end and end["total"] > start["total"]:
    result["cpu_steal_share"] = (end["steal"] - start["steal"]) / (end["total"] - start["total"])
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
    f.write("\n")
  print(f"wrote {path}")


def add_host_malloc_flag(parser) -> None:
  """`--host-malloc keep|system`: the C allocator setting of every benchmark process (both frameworks)."""
  parser.add_argument("--host-malloc", choices=("keep", "system"), default="keep",
                      help="keep: glibc keeps freed blocks mapped, as xlm_jax's runs do by default "
                           "(config.host_malloc); system: glibc defaults. It applies to every framework's process, "
                           "so a comparison stays like for like.")


def apply_host_malloc(mode: str) -> dict:
  """Apply `--host-malloc` before any large allocation; the record for the JSON."""
  from xlm_jax import host_memory
  return {"host_malloc": mode, "host_malloc_effect": host_memory.configure(mode)}


def _serve(conn, host_malloc: str, factory, args) -> None:
  """The body of a `SideProcess`: apply the allocator setting, build the side, answer method calls until None."""
  try:
    record = apply_host_malloc(host_malloc)  # before the framework allocates anything
    side = factory(*args)
    conn.send(("ok", record))
  except BaseException:  # noqa: BLE001 - reported to the parent, which raises
    conn.send(("error", traceback.format_exc()))
    return
  while True:
    message = conn.recv()
    if message is None:
      return
    method, call_args = message
    try:
      conn.send(("ok", getattr(side, method)(*call_args)))
    except BaseException:  # noqa: BLE001
      conn.send(("error", traceback.format_exc()))


class SideProcess:
  """One side of a side-by-side benchmark (our step, or transformers') in its own spawned process.

  Each framework then has its own C heap and thread pools, as when a user runs either alone: in one process the two
  share glibc's arenas, and with `host_malloc=keep` (one arena) each framework's frees and reuse slowed the other's
  steps. `factory(*args)` builds the side in the child (it must be a module-level function and its arguments
  picklable); `call(method, *args)` runs `side.method(*args)` there and returns its (picklable) result; a failure
  in the child raises here with the child's traceback. The caller alternates calls, so only one side runs at a
  time. Scripts that use it need an `if __name__ == "__main__":` guard (spawned children import them).
  """

  def __init__(self, factory, *args, host_malloc: str = "keep"):
    context = multiprocessing.get_context("spawn")
    self._conn, child = context.Pipe()
    self._process = context.Process(target=_serve, args=(child, host_malloc, factory, args), daemon=True)
    self._process.start()
    child.close()
    self.host_malloc = self._receive()

  def _receive(self):
    try:
      status, value = self._conn.recv()
    except EOFError:
      raise RuntimeError(f"benchmark side process exited (exit code {self._process.exitcode})") from None
    if status == "error":
      raise RuntimeError(f"benchmark side process failed:\n{value}")
    return value

  def call(self, method: str, *args):
    self._conn.send((method, args))
    return self._receive()

  def close(self) -> None:
    if self._process.is_alive():
      self._conn.send(None)
      self._process.join(timeout=30)
