"""Checkpoints and bundles (Orbax). The only module that talks to Orbax.

A workdir holds `checkpoints/<step>/` with four items:
  params   the model parameters (any mesh; restored onto the caller's shardings)
  train    {step, opt_state, rng}: the rest of the train state (absent in converted bundles)
  meta     JSON: bundle format, task, model config(s), language list, tokenizer state, run config, metrics
  data     JSON: the data-iterator state (next step and data fingerprint)
A *bundle* is what `xlm_jax.load` needs: params + meta. Saves are asynchronous; `keep` newest are kept; a step
directory appears only when complete, so a run killed mid-save resumes from the previous complete step.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from xlm_jax.errors import UserError
from xlm_jax.model import layout

BUNDLE_FORMAT = "xlm_jax.bundle/1"
ITEMS = ("params", "train", "meta", "data")


def checkpoint_root(path: str) -> str:
  """`path` itself when it holds step directories, else `path/checkpoints`."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return os.path.join(path, "checkpoints")
  return path


def _is_step_dir(path: str) -> bool:
  return os.path.isdir(os.path.join(path, "params")) and os.path.isdir(os.path.join(path, "meta"))


def resolve(path: str) -> tuple[str, int]:
  """(checkpoint root, step) for a workdir, a checkpoints directory or one step directory (newest step)."""
  path = os.path.abspath(os.fspath(path))
  if not os.path.exists(path):
    raise UserError(f"no checkpoint at {path!r}: the path does not exist.")
  if _is_step_dir(path) and os.path.basename(path).isdigit():
    return os.path.dirname(path), int(os.path.basename(path))
  root = checkpoint_root(path)
  steps = all_steps(root)
  if not steps:
    raise UserError(f"no complete checkpoint under {path!r} (expected step directories with params/ and meta/).")
  return root, steps[-1]


def all_steps(root: str) -> list[int]:
  if not os.path.isdir(root):
    return []
  return sorted(int(n) for n in os.listdir(root) if n.isdigit() and _is_step_dir(os.path.join(root, n)))


class Checkpointer:
  """Saves and restores train states and bundles under one checkpoint root."""

  def __init__(self, root: str, *, keep: int = 3, async_save: bool = True):
    self.root = os.path.abspath(root)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                           create=True)
    self._manager = ocp.CheckpointManager(self.root, options=options, item_names=ITEMS)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, params: Any, meta: Mapping, train: Any = None, data: Mapping | None = None,
           force: bool = False) -> bool:
    items = {"params": ocp.args.StandardSave(params), "meta": ocp.args.JsonSave(dict(meta))}
    if train is not None:
      items["train"] = ocp.args.StandardSave(train)
    if data is not None:
      items["data"] = ocp.args.JsonSave(dict(data))
    return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

  def reached_preemption(self, step: int) -> bool:
    return self._manager.reached_preemption(step)

  def restore(self, step: int, params_target: Any, train_target: Any = None) -> dict:
    """Restore step `step` onto the targets' shapes and shardings. A checkpoint written with the other layer
    layout (`scan_layers` switched since) is read in its own layout and converted (`xlm_jax.model.layout`)."""
    stored = layout.is_stacked(_stored_tree(os.path.join(self.root, str(step), "params")))
    wanted = layout.is_stacked(params_target)
    convert = stored is not None and wanted is not None and stored != wanted
    read_as = (lambda t: layout.to_layout(t, stored)) if convert else (lambda t: t)
    items = {"params": ocp.args.StandardRestore(read_as(params_target)), "meta": ocp.args.JsonRestore()}
    if train_target is not None:
      items["train"] = ocp.args.StandardRestore(read_as(train_target))
      items["data"] = ocp.args.JsonRestore()
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    out = {k: restored[k] for k in items}
    if convert:
      for key, target in (("params", params_target), ("train", train_target)):
        if key in out:
          out[key] = jax.tree.map(lambda x, t: jax.device_put(x, t.sharding), layout.to_layout(out[key], wanted),
                                  target)
    return out

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def _stored_tree(params_dir: str) -> Any:
  """The tree structure (leaf metadata) of a saved params item."""
  structure = ocp.StandardCheckpointer().metadata(params_dir)
  tree = getattr(structure, "item_metadata", structure)
  return getattr(tree, "tree", tree)  # orbax wraps the nested dict in a tree-metadata object


def read_meta(path: str) -> dict:
  """The meta JSON of a bundle (newest step of a workdir), checked for the bundle format."""
  root, step = resolve(path)
  meta_file = os.path.join(root, str(step), "meta", "metadata")
  if not os.path.isfile(meta_file):
    raise UserError(f"checkpoint {os.path.join(root, str(step))!r} has no metadata; it is not an xlm_jax bundle.")
  with open(meta_file) as f:
    meta = json.load(f)
  if meta.get("format") != BUNDLE_FORMAT:
    raise UserError(f"checkpoint {os.path.join(root, str(step))!r} has bundle format {meta.get('format')!r}; this "
                    f"version of xlm_jax reads {BUNDLE_FORMAT!r}.")
  meta["_step"] = step
  meta["_root"] = root
  return meta


def restore_params(path: str, target: Any = None) -> tuple[Any, dict]:
  """(params, meta) of a bundle. `target`: a tree of ShapeDtypeStructs (with shardings) to restore onto; without
  one the parameters come back as host numpy arrays."""
  meta = read_meta(path)
  root, step = meta["_root"], meta["_step"]
  logging.getLogger("absl").setLevel(logging.ERROR)  # Orbax warns about item-level metadata it does not need
  checkpointer = ocp.StandardCheckpointer()
  params_dir = os.path.join(root, str(step), "params")
  stored_tree = _stored_tree(params_dir)
  stored = layout.is_stacked(stored_tree)
  if target is None:  # host arrays, always in the unrolled layout (what inference and NMT seeding build)
    cpu = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
    as_stored = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu), stored_tree,
                             is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))
    params = checkpointer.restore(params_dir, as_stored)
    return (layout.to_layout(jax.device_get(params), False) if stored else params), meta
  wanted = layout.is_stacked(target)
  if stored is not None and wanted is not None and stored != wanted:
    params = checkpointer.restore(params_dir, layout.to_layout(target, stored))
    params = jax.tree.map(lambda x, t: jax.device_put(x, t.sharding), layout.to_layout(params, wanted), target)
  else:
    params = checkpointer.restore(params_dir, target)
  return params, meta


def tree_paths(tree: Any) -> dict[str, Any]:
  """{'a/b/c': leaf} for a nested dict tree."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    out["/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)] = leaf
  return out


def check_same_shapes(expected: Any, found: Any, what: str) -> None:
  """Fail with the list of differing leaves when two parameter trees differ in names or shapes."""
  a, b = tree_paths(expected), tree_paths(found)
  missing, extra = sorted(set(a) - set(b)), sorted(set(b) - set(a))
  differ = [f"{k}: {tuple(np.shape(b[k]))} vs {tuple(np.shape(a[k]))}" for k in sorted(set(a) & set(b))
            if tuple(np.shape(a[k])) != tuple(np.shape(b[k]))]
  if missing or extra or differ:
    raise UserError(f"{what}: parameters differ (missing {missing[:5]}, unexpected {extra[:5]}, "
                    f"shape {differ[:5]}).")
