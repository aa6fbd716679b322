"""Ahead-of-time memory planner: will this config fit this slice, before anyone books it?

  python -m xlm_jax.plan --config=configs/xlm_paper.py:xlm_mlm_tlm_xnli15_1024 --topology=v4-32 [--preset=fsdp]

TPU topologies (v4-N, v5e-N, v5p-N, v6e-N, N as Google names slices: TensorCores for v4/v5p, chips for v5e/v6e):
the real pretraining train step (model, loss, optimizer, gradient accumulation, shardings from the logical-axis
rules and the mesh preset) is compiled for the topology with `jax.experimental.topologies`, on any machine, with
libtpu installed (`requirements-tpu.txt`); the table shows the per-device bytes of the compiled step's memory
analysis: arguments (split into parameters, optimizer state and batch from their shardings), temporaries
(activations and workspace), outputs not aliased to donated inputs, against the chip's HBM, and "fits" or
"short by N GiB". GPU names (`8xH100`, `32xA100-40`, ...) need CUDA to compile; there the same table comes from
`jax.eval_shape` plus an activation formula and is labelled as an estimate.

Traps: compiling for a topology needs libtpu even on a CPU-only machine, and libtpu in a venv makes every JAX
program there probe for TPUs, so it belongs in a separate venv (see README). HBM sizes are the vendors' published
per-chip capacities, not measured here; XLA reserves some of it, so "fits" with less than ~5% headroom is marginal.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Any, Mapping

GIB = 1024 ** 3
# Per-device HBM (GiB), vendor specifications (Cloud TPU system architecture pages; NVIDIA data sheets).
TPU_HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}
GPU_HBM_GIB = {"H100": 80, "H200": 141, "A100": 80, "A100-40": 40, "B200": 180}
# (topology name prefix for jax.experimental.topologies, chip config, cores per chip the slice name counts)
TPU_KINDS = {"v4": ("v4", "megacore", 2), "v5p": ("v5", "megacore", 2), "v5e": ("v5e", "default", 1),
             "v6e": ("v6e", "default", 1)}
REMATS = ("none", "dots_saveable", "full")
PRESET_ORDER = ("fsdp", "fsdp_tp", "dp")  # the order in which a fitting alternative is looked for


@dataclasses.dataclass(frozen=True)
class Target:
  """A slice to plan for: platform, device count, per-device HBM, and how to build its topology."""

  name: str
  platform: str                 # tpu | gpu
  devices: int
  hbm_bytes: int
  topology: str = ""            # e.g. v4:2x2x4 (TPU only)
  chip_config: str = "default"

  @property
  def hbm_gib(self) -> float:
    return self.hbm_bytes / GIB


def _torus(chips: int, dims: int) -> tuple[int, ...] | None:
  """The slice shape Google uses for `chips` chips (a power of two, at least 4): 3-D 2x2x1, 2x2x2, 2x2x4, 2x4x4,
  4x4x4, ... (v4, v5p); 2-D 2x2, 2x4, 4x4, 4x8, ..., 16x16 (v5e, v6e). Doubling the last of the smallest sides."""
  if chips < 4 or chips & (chips - 1):
    return None
  if dims == 3 and chips == 4:
    return (2, 2, 1)
  shape = [2] * dims
  while math.prod(shape) < chips:
    smallest = min(shape)
    shape[max(i for i, s in enumerate(shape) if s == smallest)] *= 2
  return tuple(shape)


def parse_target(name: str) -> Target:
  """`v4-32`, `v5e-256`, `v5p-128`, `v6e-64`, or `<count>x<GPU>` (`8xH100`, `32xA100-40`); one sentence otherwise."""
  known = (f"TPU slices v4-N, v5p-N (N TensorCores, a multiple of 8), v5e-N, v6e-N (N chips, a power of two "
           f"from 4), or GPUs as <count>x<model> with a model of {sorted(GPU_HBM_GIB)}")
  m = re.fullmatch(r"(v4|v5p|v5e|v6e)-(\d+)", name.strip())
  if m:
    kind, count = m.group(1), int(m.group(2))
    prefix, chip_config, cores = TPU_KINDS[kind]
    chips = count // cores
    shape = _torus(chips, 3 if cores == 2 else 2) if count % cores == 0 and chips >= 4 else None
    if shape is None:
      raise _user_error(f"unknown topology {name!r}: use {known}.")
    return Target(name, "tpu", chips, int(TPU_HBM_GIB[kind] * GIB), f"{prefix}:{'x'.join(map(str, shape))}",
                  chip_config)
  m = re.fullmatch(r"(\d+)x([A-Za-z0-9-]+)", name.strip())
  if m and m.group(2).upper() in {k.upper() for k in GPU_HBM_GIB}:
    model = next(k for k in GPU_HBM_GIB if k.upper() == m.group(2).upper())
    return Target(name, "gpu", int(m.group(1)), int(GPU_HBM_GIB[model] * GIB))
  raise _user_error(f"unknown topology {name!r}: use {known}.")


def _user_error(message: str):
  from xlm_jax.errors import UserError
  return UserError(message)


def topology_devices(target: Target):
  """The devices of a TPU slice, from libtpu's topology description (no TPU needed)."""
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  # compiling only: let several planner processes share libtpu (else the second fails on /tmp/libtpu_lockfile)
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    from jax.experimental import topologies
    return list(topologies.get_topology_desc(platform="tpu", topology_name=target.topology,
                                             chip_config_name=target.chip_config, chips_per_host_bounds=(2, 2, 1),
                                             num_slices=1).devices)
  except Exception as e:  # noqa: BLE001 - libtpu missing or too old: say so in one sentence
    raise _user_error(f"cannot describe the TPU topology {target.topology} ({target.name}): "
                      f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; install libtpu "
                      "(pip install -r requirements-tpu.txt, in a separate venv) to compile for TPUs.") from None


def _languages(config) -> list[str]:
  from xlm_jax.config_base import parse_list
  return sorted(parse_list(config.data.languages))


def model_and_step(config):
  """(TransformerConfig, boxed init, loss, optimizer, schedule, abstract local batch) of the pretraining step of
  `config`, without data: shapes only (the vocabulary is `config.data.vocab_size`)."""
  import jax
  import numpy as np
  from xlm_jax.data.masking import mlm_slots
  from xlm_jax.data.mixture import parse_steps
  from xlm_jax.model import Transformer, init_params
  from xlm_jax.train import pretrain
  from xlm_jax.train.optim import make_optimizer, parse_lambda

  languages = _languages(config)
  cfg = pretrain.model_config(config, int(config.data.vocab_size), len(languages), 2)
  specs = parse_steps(config.data.mlm_steps, "mlm") + parse_steps(config.data.clm_steps, "clm")
  keys = sorted({s.key for s in specs})
  rows, length = int(config.data.batch_size), int(config.data.bptt)
  batch = {}
  for key in keys:
    slots = length - 1 if key == "clm" else mlm_slots(length, config.data.word_pred)
    shapes = {"tokens": (rows, length), "positions": (rows, length), "langs": (rows, length),
              "segment_ids": (rows, length), "pred_index": (rows, slots), "pred_targets": (rows, slots),
              "pred_weights": (rows, slots)}
    batch[key] = {f: jax.ShapeDtypeStruct(shape, np.float32 if f == "pred_weights" else np.int32)
                  for f, shape in shapes.items()}
  lambdas = {o: parse_lambda(getattr(config.data, f"lambda_{o}"), f"config.data.lambda_{o}") for o in ("mlm", "clm")}
  lambdas["tlm"] = lambdas["mlm"]
  tx, schedule = make_optimizer(config.train)
  loss = pretrain.make_loss(Transformer(cfg), lambdas)
  return cfg, (lambda rng: init_params(cfg, rng)), loss, tx, schedule, batch


def _per_device_bytes(tree, shardings) -> int:
  """Bytes one device holds of `tree` (ShapeDtypeStructs) laid out by `shardings` (NamedShardings)."""
  import jax
  import numpy as np
  total = 0
  for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
    shard = list(x.shape)
    for i, axes in enumerate(tuple(s.spec)[:len(shard)]):
      for axis in (axes if isinstance(axes, tuple) else (axes,) if axes else ()):
        shard[i] = -(-shard[i] // s.mesh.shape[axis])  # a dimension the axis does not divide is padded
    total += int(np.prod(shard)) * np.dtype(x.dtype).itemsize
  return total


def plan(config, target: Target, preset: str, remat: str | None = None) -> dict:
  """Compile (TPU) or estimate (GPU) one train step; a dict of per-device bytes and the verdict."""
  import jax
  import flax.linen as nn
  from xlm_jax import parallel
  from xlm_jax.config_base import override
  from xlm_jax.train.loop import make_train_step
  from xlm_jax.train.state import sharded_state_layout

  config = config.copy_and_resolve_references()
  config.unlock()
  override(config, {"mesh.preset": preset})
  if remat is not None:
    override(config, {"model.remat": remat})
  devices = topology_devices(target) if target.platform == "tpu" else None
  if devices is not None:
    mesh = parallel.make_mesh(config.mesh.to_dict(), devices)
  else:  # an abstract mesh of the GPU count: shardings only, nothing compiled
    shape = parallel.mesh_shape(config.mesh.to_dict(), target.devices, min(target.devices, 8))
    mesh = jax.sharding.AbstractMesh(shape, parallel.MESH_AXES)
  accumulate = int(config.train.accumulate_gradients)
  batch_error = ""
  try:
    parallel.check_batch(int(config.data.batch_size), mesh, accumulate)
  except Exception as e:  # noqa: BLE001 - reported in the table, not fatal for the other rows
    batch_error = str(e)
  cfg, init, loss, tx, schedule, batch = model_and_step(config)
  rules = parallel.rules_from_config(config.mesh.rules)
  with nn.logical_axis_rules(rules):
    _, target_state, shardings = sharded_state_layout(init, tx, config.seed, mesh, rules)
  data_sharding = parallel.batch_sharding(mesh)
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=data_sharding), batch)
  n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(target_state.params))
  row = {"config": config.get("plan_name", ""), "topology": target.name, "platform": target.platform,
         "devices": target.devices, "preset": preset, "mesh": dict(zip(parallel.MESH_AXES, mesh.axis_sizes)),
         "remat": cfg.remat, "scan_layers": cfg.scan_layers, "parameters": int(n_params),
         "global_batch": int(config.data.batch_size), "bptt": int(config.data.bptt),
         "per_device_batch": int(config.data.batch_size) / parallel.batch_divisor(mesh),
         "params_bytes": _per_device_bytes(target_state.params, shardings.params),
         "opt_state_bytes": _per_device_bytes(target_state.opt_state, shardings.opt_state),
         "batch_bytes": _per_device_bytes(batch, jax.tree.map(lambda _: data_sharding, batch)),
         "hbm_bytes": target.hbm_bytes, "estimate": target.platform != "tpu", "error": batch_error}
  if batch_error:
    row.update(total_bytes=None, verdict="batch does not divide")
    return row
  if target.platform == "tpu":
    step = jax.jit(make_train_step(loss, tx, schedule, accumulate), in_shardings=(shardings, data_sharding),
                   out_shardings=(shardings, None), donate_argnums=0)
    try:
      with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        compiled = step.lower(target_state, batch).compile()
    except Exception as e:  # noqa: BLE001 - the TPU compiler refuses a step that cannot fit in HBM
      needed = oom_temporaries(str(e))
      if needed is None:
        raise
      row.update(temp_bytes=needed, compile_error=str(e).splitlines()[0][:300])
      row["total_bytes"] = row["params_bytes"] + row["opt_state_bytes"] + row["batch_bytes"] + needed
      row["verdict"] = f"short by {max(row['total_bytes'] - target.hbm_bytes, 0) / GIB:.1f} GiB"
      return row
    stats = compiled.memory_analysis()
    row.update(argument_bytes=int(stats.argument_size_in_bytes), temp_bytes=int(stats.temp_size_in_bytes),
               output_bytes=int(stats.output_size_in_bytes), alias_bytes=int(stats.alias_size_in_bytes),
               code_bytes=int(stats.generated_code_size_in_bytes))
    row["total_bytes"] = (row["argument_bytes"] + row["temp_bytes"] + row["output_bytes"] - row["alias_bytes"]
                          + row["code_bytes"])
  else:
    row["temp_bytes"] = activation_estimate(cfg, row["per_device_batch"] / accumulate, row["bptt"],
                                            mesh_tensor=dict(zip(parallel.MESH_AXES, mesh.axis_sizes))["tensor"])
    # gradients (as large as the parameters) live next to the state during the update
    row["total_bytes"] = 2 * row["params_bytes"] + row["opt_state_bytes"] + row["batch_bytes"] + row["temp_bytes"]
  short = row["total_bytes"] - target.hbm_bytes
  row["verdict"] = "fits" if short <= 0 else f"short by {short / GIB:.1f} GiB"
  return row


def oom_temporaries(message: str) -> int | None:
  """Bytes of temporaries from the TPU compiler's refusal ('... HLO temporaries (34.43G) exceeds available HBM
  (30.75G)'), or None when `message` is another error."""
  m = re.search(r"RESOURCE_EXHAUSTED.*?temporaries \(([\d.]+)([KMGT])\)", message, re.S)
  if not m:
    return None
  return int(float(m.group(1)) * 1024 ** "KMGT".index(m.group(2)) * 1024)


def activation_estimate(cfg, rows_per_device: float, length: int, mesh_tensor: int = 1) -> int:
  """Bytes of activations kept for the backward pass (an estimate, for GPUs where nothing is compiled here).

  Per layer and row, Korthikanti et al. (2022, "Reducing activation recomputation") count L*d*(34 + 5*h*L/d)
  bytes with 16-bit activations and dropout; the h*L^2 part (scores, softmax, dropout mask) and the FFN split over
  `tensor`. `full` remat keeps only each layer's input (2*L*d bytes) plus one layer's working set; `dots_saveable`
  keeps the matmul outputs (~ 24*L*d + 4*h*L^2 bytes)."""
  d, h, layers = cfg.emb_dim, cfg.n_heads, cfg.n_layers
  per_layer = length * d * (34 + 5 * h * length / d / mesh_tensor)
  if cfg.remat == "full":
    kept = layers * 2 * length * d + per_layer
  elif cfg.remat == "dots_saveable":
    kept = layers * length * (24 * d + 4 * h * length / mesh_tensor) + per_layer
  else:
    kept = layers * per_layer
  logits = 4 * mlm_positions(cfg, length) * cfg.vocab_size * 2 / mesh_tensor  # f32 logits and their gradient
  return int(rows_per_device * (kept + logits))


def mlm_positions(cfg, length: int) -> int:
  from xlm_jax.data.masking import mlm_slots
  return mlm_slots(length, 0.15)


def suggestion(config, target: Target, failed: Mapping[tuple[str, str], dict]) -> str:
  """The first (preset, remat) in order of preference that fits, compiled as needed; '' when none does."""
  for preset in PRESET_ORDER:
    for remat in REMATS:
      row = failed.get((preset, remat)) or plan(config, target, preset, remat)
      if row["verdict"] == "fits":
        return f"config.mesh.preset={preset} with config.model.remat={remat}"
  return ""


def format_table(rows: list[dict]) -> str:
  """A markdown table of plan rows (GiB per device)."""
  g = lambda b: "-" if b is None else f"{b / GIB:.2f}"
  head = ("| config | topology | preset (mesh) | remat | rows/shard | params | opt state | batch | "
          "temporaries | outputs-aliased | total | HBM | verdict |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for r in rows:
    mesh = "x".join(str(r["mesh"][a]) for a in ("data", "fsdp", "tensor"))
    out = r.get("output_bytes", 0) - r.get("alias_bytes", 0) if "output_bytes" in r else None
    label = r["verdict"] + (" (estimate)" if r["estimate"] else "")
    lines.append(f"| {r['config']} | {r['topology']} | {r['preset']} ({mesh}) | {r['remat']} | "
                 f"{r['per_device_batch']:g} | {g(r['params_bytes'])} | {g(r['opt_state_bytes'])} | "
                 f"{g(r['batch_bytes'])} | {g(r.get('temp_bytes'))} | {g(out)} | {g(r.get('total_bytes'))} | "
                 f"{r['hbm_bytes'] / GIB:g} | {label} |")
  return "\n".join(lines)


def verdict_sentence(row: dict, fix: str) -> str:
  what = f"{row['config'] or 'the model'} on {row['topology']} with preset {row['preset']} and remat {row['remat']}"
  if row["verdict"] == "fits":
    return f"{what} fits: {row['total_bytes'] / GIB:.1f} of {row['hbm_bytes'] / GIB:g} GiB per device."
  if row["error"]:
    return f"{what}: {row['error']}"
  tail = f"; {fix} would fit" if fix else "; no preset or remat policy fits: use a larger slice or a smaller batch"
  return (f"{what} does not fit: {row['total_bytes'] / GIB:.1f} GiB per device against {row['hbm_bytes'] / GIB:g} "
          f"GiB of HBM ({row['verdict']}){tail}.")


def main(argv=None) -> int:
  from absl import app, flags
  from ml_collections import config_flags

  config_flag = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/xlm_paper.py:VARIANT.",
                                                lock_config=False)
  topology = flags.DEFINE_string("topology", None, "v4-32, v5e-256, v5p-128, v6e-64, 8xH100, ...")
  preset = flags.DEFINE_string("preset", "", "dp | fsdp | fsdp_tp ('' = the config's config.mesh.preset or fsdp)")
  out = flags.DEFINE_string("json", "", "also write the rows as JSON here")

  def run(_):
    from xlm_jax.cli import fail
    from xlm_jax.errors import UserError
    if not topology.value or config_flag.value is None:
      fail("--config and --topology are required, e.g. --config=configs/xlm_paper.py:xlm_mlm_100_1280 "
           "--topology=v4-32.")
    config = config_flag.value
    try:
      target = parse_target(topology.value)
      which = preset.value or config.mesh.preset or "fsdp"
      row = plan(config, target, which)
      row["config"] = _config_name(flags.FLAGS["config"].serialize())
      print(format_table([row]))
      fix = suggestion(config, target, {(which, row["remat"]): row}) if row["verdict"] != "fits" else ""
      print(verdict_sentence(row, fix))
      if out.value:
        with open(out.value, "w") as f:
          json.dump(row, f, indent=1)
    except UserError as e:
      fail(str(e))
    return 0

  app.run(run, argv=argv)
  return 0


def _config_name(flag: str) -> str:
  """'--config=configs/xlm_paper.py:xlm_mlm_100_1280' -> 'xlm_mlm_100_1280' (or the file name)."""
  value = flag.split("=", 1)[-1]
  return value.split(":", 1)[1] if ":" in value else os.path.basename(value)


if __name__ == "__main__":
  main()
