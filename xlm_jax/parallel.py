"""Device mesh, logical-axis rules, distributed start-up, and host batches -> global arrays.

The mesh has three axes, `data`, `fsdp` and `tensor`, sized from `config.mesh` (one size may be -1: all the
devices left). Model code names its axes logically (`batch`, `embed`, `heads`, `mlp`, `vocab`, ...); the rules
table `config.mesh.rules` maps them onto mesh axes, so one model runs data-parallel, fully sharded or
tensor-parallel by changing the config only. The batch axis is split over `data` and `fsdp`.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from xlm_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
)


def maybe_initialize_distributed(coordinator: str = "", num_processes: int = 0, process_id: int = -1) -> None:
  """Start JAX's distributed runtime when asked (or when a cluster environment is detected).

  Explicit arguments (or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID) win; otherwise, on
  Cloud TPU pods and under SLURM with several tasks, `jax.distributed.initialize()` detects everything itself.
  """
  coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
  num_processes = num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "0") or 0)
  process_id = process_id if process_id >= 0 else int(os.environ.get("JAX_PROCESS_ID", "-1") or -1)
  if coordinator:
    if num_processes <= 0 or process_id < 0:
      raise UserError("a coordinator address needs num_processes and process_id (or JAX_NUM_PROCESSES and "
                      "JAX_PROCESS_ID).")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id,
                               initialization_timeout=120)
  elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 or os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:
    jax.distributed.initialize()
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def mesh_shape(sizes: Mapping[str, int], n_devices: int) -> tuple[int, ...]:
  """Resolve the mesh sizes (one may be -1) against the device count, or explain what does not fit."""
  shape = [int(sizes.get(a, 1)) for a in MESH_AXES]
  if shape.count(-1) > 1:
    raise UserError(f"config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, shape))}.")
  fixed = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if n_devices % fixed:
      raise UserError(f"config.mesh {dict(zip(MESH_AXES, shape))} does not divide the {n_devices} devices.")
    shape[shape.index(-1)] = n_devices // fixed
  if int(np.prod(shape)) != n_devices:
    raise UserError(f"config.mesh {dict(zip(MESH_AXES, shape))} needs {int(np.prod(shape))} devices, but "
                    f"{n_devices} are available; set one axis to -1 or change the sizes.")
  return tuple(shape)


def make_mesh(sizes: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
  devices = list(devices) if devices is not None else jax.devices()
  shape = mesh_shape(sizes, len(devices))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


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
