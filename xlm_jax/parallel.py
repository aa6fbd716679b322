"""Device mesh, logical-axis rules, distributed start-up, and host batches -> global arrays.

The mesh has three axes, `data`, `fsdp` and `tensor`. `config.mesh.preset` fills them from the devices:
  dp       data = all devices (parameters replicated),
  fsdp     fsdp = all devices (parameters and optimizer state sharded, ZeRO-3 style),
  fsdp_tp  tensor = `config.mesh.tensor` if > 1, else the largest of 4, 2 dividing the devices of one host
           (heads, FFN and vocabulary split inside a host), fsdp = the rest;
or, with an empty preset, `config.mesh.{data,fsdp,tensor}` give the sizes (one may be -1: all devices left).
Model code names its axes logically (`batch`, `embed`, `heads`, `mlp`, `vocab`, ...); the rules table
`config.mesh.rules` maps them onto mesh axes, so one model runs data-parallel, fully sharded or tensor-parallel
by changing the config only. The batch axis is split over `data` and `fsdp`.

Distributed start-up (`initialize_distributed`) happens whenever a cluster is detected: explicit
`config.distributed.*` (or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID), SLURM with several tasks,
or a Cloud TPU VM (TPU chips on the PCI bus); never on a plain single host. The trap it guards against: JAX's
coordination client *aborts the process* (SIGABRT from C++, no Python exception) when the coordinator cannot be
reached in time, so a watchdog thread ends the process first with one sentence that names the address.
"""
from __future__ import annotations

import contextlib
import glob
import logging
import math
import os
import sys
import threading
from typing import Any, Iterator, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from xlm_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
PRESETS = ("dp", "fsdp", "fsdp_tp")
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
)
GOOGLE_PCI_VENDOR = "0x1ae0"  # Cloud TPU chips appear on the PCI bus with Google's vendor id


def cluster_kind(coordinator: str = "", env: Mapping[str, str] | None = None,
                 pci_root: str = "/sys/bus/pci/devices") -> str:
  """Which distributed start-up applies here: 'explicit', 'slurm', 'cloud_tpu', or '' (one host, no start-up).

  explicit: a coordinator address in the config or JAX_COORDINATOR_ADDRESS. slurm: inside `srun` with more than
  one task (SLURM_NTASKS > 1 and SLURM_PROCID set; `sbatch` alone runs one shell). cloud_tpu: TPU chips on the PCI
  bus, or the pod variables GKE / queued resources set (TPU_WORKER_HOSTNAMES, MEGASCALE_COORDINATOR_ADDRESS).
  """
  env = os.environ if env is None else env
  if coordinator or env.get("JAX_COORDINATOR_ADDRESS"):
    return "explicit"
  if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_PROCID" in env:
    return "slurm"
  if env.get("TPU_WORKER_HOSTNAMES") or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return "cloud_tpu"
  for vendor in glob.glob(os.path.join(pci_root, "*", "vendor")):
    try:
      with open(vendor) as f:
        if f.read().strip() == GOOGLE_PCI_VENDOR:
          return "cloud_tpu"
    except OSError:
      continue
  return ""


def expected_process_count(kind: str, env: Mapping[str, str] | None = None) -> int | None:
  """The number of processes the cluster itself announces (None when it does not say before start-up)."""
  env = os.environ if env is None else env
  if kind == "slurm":
    return int(env["SLURM_NTASKS"])
  hosts = env.get("TPU_WORKER_HOSTNAMES", "")
  if kind == "cloud_tpu" and hosts:
    return len([h for h in hosts.split(",") if h.strip()])
  return None


@contextlib.contextmanager
def _watchdog(seconds: float, message: str) -> Iterator[None]:
  """End the process with `error: <message>` (status 2) unless the block finishes within `seconds`.

  Needed because JAX's coordination client terminates the process from C++ (no exception to catch) when the
  coordinator does not answer; the blocked call releases the GIL, so this timer thread runs."""
  def fire():
    print(f"error: {message}", file=sys.stderr, flush=True)
    os._exit(2)

  timer = threading.Timer(seconds, fire)
  timer.daemon = True
  timer.start()
  try:
    yield
  finally:
    timer.cancel()


def _auto_coordinator(kind: str) -> str:
  """The coordinator address JAX's own cluster detection will use (for the time-out message); best effort."""
  try:
    from jax._src import clusters  # private, but it is exactly what jax.distributed.initialize() consults
    for env_cls in clusters.ClusterEnv._cluster_types:
      if env_cls.is_env_present():
        return str(env_cls.get_coordinator_address(timeout_secs=10, override_coordinator_port=None))
  except Exception:  # noqa: BLE001 - only used to make an error message more precise
    pass
  return f"the address JAX detects for {kind}"


def initialize_distributed(coordinator: str = "", num_processes: int = 0, process_id: int = -1,
                           timeout_s: float = 300, env: Mapping[str, str] | None = None) -> str:
  """Start JAX's distributed runtime when a cluster is detected (see `cluster_kind`); returns the kind ('' = none).

  Must run before anything touches a device. Bad settings end in one sentence (a `UserError`, or for a
  coordinator that does not answer within `timeout_s`, `error: ...` on stderr and exit status 2):
  a coordinator without a process count or id, an id outside the count, a count that differs from the cluster's
  (SLURM_NTASKS, the TPU worker list, or what the runtime reports after start-up).
  """
  env = os.environ if env is None else env
  kind = cluster_kind(coordinator, env)
  if not kind:
    if num_processes > 1:
      raise UserError(f"config.distributed.num_processes={num_processes} but no cluster was detected and no "
                      "coordinator is set; set config.distributed.coordinator=HOST:PORT (and process_id) on every "
                      "process, or launch through SLURM or a TPU pod.")
    return ""
  announced = expected_process_count(kind, env)
  if kind == "explicit":
    coordinator = coordinator or env["JAX_COORDINATOR_ADDRESS"]
    num_processes = num_processes or int(env.get("JAX_NUM_PROCESSES", "0") or 0)
    process_id = process_id if process_id >= 0 else int(env.get("JAX_PROCESS_ID", "-1") or -1)
    if num_processes <= 0 or process_id < 0:
      raise UserError(f"the coordinator {coordinator} needs config.distributed.num_processes and process_id (or "
                      "JAX_NUM_PROCESSES and JAX_PROCESS_ID) on every process.")
    if process_id >= num_processes:
      raise UserError(f"config.distributed.process_id={process_id} is outside 0..{num_processes - 1} "
                      f"(config.distributed.num_processes={num_processes}).")
  elif num_processes and announced is not None and num_processes != announced:
    raise UserError(f"config.distributed.num_processes={num_processes} but the {kind} cluster runs {announced} "
                    "processes; drop the setting or make it match the job.")
  address = coordinator if kind == "explicit" else _auto_coordinator(kind)
  who = f"process {process_id} of {num_processes}" if kind == "explicit" else f"this {kind} process"
  message = (f"the JAX coordinator at {address} was not reached by all processes within {timeout_s:g} s ({who}); "
             "check that every process was started and that the address and port are reachable from this host "
             "(config.distributed.timeout_s sets the wait).")
  kwargs = dict(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id) \
      if kind == "explicit" else {}
  with _watchdog(timeout_s, message):
    # JAX's own deadline is set later than ours, so the watchdog's sentence wins over the C++ abort.
    jax.distributed.initialize(initialization_timeout=int(timeout_s) + 60, **kwargs)
  actual = jax.process_count()
  wanted = num_processes or announced
  if wanted and actual != wanted:
    raise UserError(f"{wanted} processes were expected (config.distributed.num_processes or the cluster), but the "
                    f"distributed runtime reports {actual}; make the process count match the job.")
  logging.info("distributed start-up (%s): process %d of %d, %d local / %d global devices", kind,
               jax.process_index(), actual, jax.local_device_count(), jax.device_count())
  return kind


def preset_sizes(preset: str, n_devices: int, local_devices: int, tensor: int = 1) -> dict[str, int]:
  """Mesh sizes of a preset (see the module docstring) for `n_devices` devices, `local_devices` per host."""
  if preset == "dp":
    return {"data": n_devices, "fsdp": 1, "tensor": 1}
  if preset == "fsdp":
    return {"data": 1, "fsdp": n_devices, "tensor": 1}
  if preset == "fsdp_tp":
    if tensor <= 1:
      tensor = next((t for t in (4, 2) if local_devices % t == 0 and n_devices % t == 0), 1)
    if n_devices % tensor:
      raise UserError(f"config.mesh.preset='fsdp_tp' with tensor={tensor} does not divide the {n_devices} devices; "
                      "set config.mesh.tensor to a divisor of the device count.")
    return {"data": 1, "fsdp": n_devices // tensor, "tensor": tensor}
  raise UserError(f"config.mesh.preset={preset!r} is not one of {PRESETS} (or '' to use config.mesh.data/fsdp/"
                  "tensor).")


def mesh_shape(sizes: Mapping[str, Any], n_devices: int, local_devices: int | None = None) -> tuple[int, ...]:
  """Resolve the mesh sizes (a preset, or sizes where one may be -1) against the device count, or explain what
  does not fit in one sentence."""
  preset = str(sizes.get("preset", "") or "")
  if preset:
    resolved = preset_sizes(preset, n_devices, local_devices or n_devices, int(sizes.get("tensor", 1) or 1))
    return tuple(resolved[a] for a in MESH_AXES)
  shape = [int(sizes.get(a, 1)) for a in MESH_AXES]
  if shape.count(-1) > 1:
    raise UserError(f"config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, shape))}.")
  fixed = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if n_devices % fixed:
      raise UserError(f"config.mesh {dict(zip(MESH_AXES, shape))} does not divide the {n_devices} devices; use sizes "
                      f"whose product divides {n_devices}, or config.mesh.preset.")
    shape[shape.index(-1)] = n_devices // fixed
  if int(np.prod(shape)) != n_devices:
    raise UserError(f"config.mesh {dict(zip(MESH_AXES, shape))} needs {int(np.prod(shape))} devices, but "
                    f"{n_devices} are available; set one axis to -1, change the sizes, or use config.mesh.preset.")
  return tuple(shape)


def make_mesh(sizes: Mapping[str, Any], devices: Sequence[Any] | None = None) -> Mesh:
  """The mesh for `config.mesh` (a dict: preset and/or data/fsdp/tensor sizes) over `devices` (default: all).

  On TPUs the device order follows the physical torus (`mesh_utils.create_device_mesh`), elsewhere the process
  order, so the batch rows of one process stay on its own devices."""
  devices = list(devices) if devices is not None else jax.devices()
  local = sum(1 for d in devices if d.process_index == devices[0].process_index)
  shape = mesh_shape(sizes, len(devices), local)
  if devices[0].platform == "tpu":
    from jax.experimental import mesh_utils
    try:
      return Mesh(mesh_utils.create_device_mesh(shape, devices), MESH_AXES)
    except (ValueError, NotImplementedError, AssertionError):  # shapes the torus helper does not handle
      pass
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def topology_summary(mesh: Mesh, global_batch_rows: int | None = None, accumulate: int = 1) -> str:
  """What process 0 prints at start-up: processes, local/global devices, the mesh, global and per-device batch."""
  devices = mesh.devices.flat
  first = next(iter(devices))
  kind = getattr(first, "device_kind", first.platform)
  text = (f"topology: {jax.process_count()} process(es), {jax.local_device_count()} local / {mesh.devices.size} "
          f"global {first.platform} devices ({kind}); mesh {dict(mesh.shape)}")
  if global_batch_rows:
    per_device = global_batch_rows / batch_divisor(mesh)
    text += (f"; batch {global_batch_rows} rows global, {global_batch_rows // jax.process_count()} per process, "
             f"{per_device:g} per device")
    if accumulate > 1:
      text += f" ({per_device / accumulate:g} per micro-batch of {accumulate})"
  return text


def check_batch(batch_size: int, mesh: Mesh, accumulate: int = 1, field: str = "config.data.batch_size") -> None:
  """One sentence when the global batch cannot be split over the batch mesh axes and the micro-batches."""
  divisor = batch_divisor(mesh) * int(accumulate)
  if batch_size % divisor or batch_size <= 0:
    suggestion = max(divisor, int(math.ceil(max(batch_size, 1) / divisor)) * divisor)
    raise UserError(f"{field}={batch_size} is not divisible by {divisor} ({batch_divisor(mesh)} devices on the "
                    f"data x fsdp mesh axes times train.accumulate_gradients={accumulate}); use e.g. {suggestion}.")


def rules_from_config(rules) -> tuple:
  """Rules as a tuple of (logical name, mesh axis | tuple of axes | None)."""
  out = []
  for name, axes in rules:
    if isinstance(axes, list):
      axes = tuple(axes)
    out.append((name, axes))
  return tuple(out)


def logical_shardings(abstract_tree, mesh: Mesh, rules) -> Any:
  """NamedShardings for a tree of boxed (logically partitioned) abstract values."""
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def global_batch(local: Any, mesh: Mesh) -> Any:
  """Assemble per-process numpy rows into global jax.Arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)

  def put(x):
    x = np.asarray(x)
    global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
    return jax.make_array_from_process_local_data(sharding, x, global_shape)

  return jax.tree.map(put, local)


def batch_divisor(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def process_zero_first(fn, name: str):
  """Run `fn` on process 0, then on the others once process 0 is done (for work that writes a shared cache:
  the others then find it ready). Single-process runs just call `fn`."""
  if jax.process_count() == 1:
    return fn()
  from jax.experimental import multihost_utils
  if jax.process_index() == 0:
    result = fn()
    multihost_utils.sync_global_devices(f"xlm_jax:{name}")
    return result
  multihost_utils.sync_global_devices(f"xlm_jax:{name}")
  return fn()
