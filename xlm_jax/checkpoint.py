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
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from xlm_jax import paths
from xlm_jax.errors import UserError
from xlm_jax.model import layout

BUNDLE_FORMAT = "xlm_jax.bundle/1"
ITEMS = ("params", "train", "meta", "data")
TMP_MARKER = ".orbax-checkpoint-tmp"  # how Orbax names a step directory while it is being written


def checkpoint_root(path: str) -> str:
  """`path` itself when it holds step directories, else `path/checkpoints` (local paths or gs:// URLs)."""
  path = paths.resolve(path)
  if paths.isdir(paths.join(path, "checkpoints")):
    return paths.join(path, "checkpoints")
  return path


def _is_step_dir(path: str) -> bool:
  return paths.isdir(paths.join(path, "params")) and paths.isdir(paths.join(path, "meta"))


def resolve(path: str) -> tuple[str, int]:
  """(checkpoint root, step) for a workdir, a checkpoints directory or one step directory (newest step)."""
  path = paths.resolve(path)
  if not paths.exists(path):
    raise UserError(f"no checkpoint at {path!r}: the path does not exist.")
  if paths.basename(path).isdigit() and _is_step_dir(path):
    return paths.dirname(path), int(paths.basename(path))
  root = checkpoint_root(path)
  steps = all_steps(root)
  if not steps:
    raise UserError(f"no complete checkpoint under {path!r} (expected step directories with params/ and meta/).")
  return root, steps[-1]


def all_steps(root: str) -> list[int]:
  return sorted(int(n) for n in paths.listdir(root) if n.isdigit() and _is_step_dir(paths.join(root, n)))


def _os_error(e: BaseException) -> OSError | None:
  """The OSError (disk full, permission, I/O) behind `e`, if any (Orbax wraps them)."""
  seen = set()
  while e is not None and id(e) not in seen:
    if isinstance(e, OSError):
      return e
    seen.add(id(e))
    e = e.__cause__ or e.__context__
  return None


class Checkpointer:
  """Saves and restores train states and bundles under one checkpoint root.

  Guarantees (docs/reliability.md): a step directory appears only once complete (Orbax writes a temporary
  directory and renames it); temporary directories left by an interrupted save are removed when the next run opens
  the root; a newest checkpoint that cannot be restored is set aside (renamed `corrupt.<step>`, never deleted) and
  the previous one is used, with a warning; a save that fails (disk full, permission) raises one `UserError`
  sentence and leaves the earlier checkpoints as they were.
  """

  def __init__(self, root: str, *, keep: int = 3, async_save: bool = True):
    self.root = paths.resolve(root)
    self._keep, self._async = keep, async_save
    self._failed = False
    self._remove_interrupted_saves()
    self._manager = self._open()

  def _remove_interrupted_saves(self) -> None:
    """Delete what interrupted saves left behind (Orbax's `<step>.orbax-checkpoint-tmp*` directories): they are
    never complete and never read. Runs before this run saves anything."""
    if jax.process_index() == 0:
      for name in paths.listdir(self.root):
        if TMP_MARKER in name:
          paths.path(paths.join(self.root, name)).rmtree(missing_ok=True)
    _sync("checkpoint-cleanup")

  def _open(self) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=self._keep, enable_async_checkpointing=self._async,
                                           create=True, cleanup_tmp_directories=True)
    return ocp.CheckpointManager(self.root, options=options, item_names=ITEMS)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def _save_failed(self, step: int | None, e: BaseException) -> UserError:
    self._failed = True
    error = _os_error(e)
    if error is None:
      raise e
    steps = [s for s in all_steps(self.root)]
    what = f"step {step}" if step is not None else "a checkpoint"
    return UserError(f"could not write {what} under {self.root} ({error.strerror or error}); the earlier "
                     f"checkpoints {steps or '(none)'} are intact: free space or fix the permissions, then re-run "
                     "the same command to resume.")

  def save(self, step: int, params: Any, meta: Mapping, train: Any = None, data: Mapping | None = None,
           force: bool = False) -> bool:
    items = {"params": ocp.args.StandardSave(params), "meta": ocp.args.JsonSave(dict(meta))}
    if train is not None:
      items["train"] = ocp.args.StandardSave(train)
    if data is not None:
      items["data"] = ocp.args.JsonSave(dict(data))
    try:
      return self._manager.save(step, args=ocp.args.Composite(**items), force=force)
    except Exception as e:  # noqa: BLE001 - only OS errors become a UserError, the rest re-raise
      raise self._save_failed(step, e) from None

  def reached_preemption(self, step: int) -> bool:
    return self._manager.reached_preemption(step)

  def restore(self, step: int, params_target: Any, train_target: Any = None) -> dict:
    """Restore step `step` onto the targets' shapes and shardings. A checkpoint written with the other layer
    layout (`scan_layers` switched since) is read in its own layout and converted (`xlm_jax.model.layout`)."""
    stored = layout.is_stacked(_stored_tree(paths.join(self.root, str(step), "params")))
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

  def restore_newest(self, params_target: Any, train_target: Any = None) -> tuple[int | None, dict | None]:
    """(step, restored items) of the newest checkpoint that restores; (None, None) when the root holds none.

    Names and shapes are checked against the target first: a checkpoint of a different model is a `UserError`
    (Orbax itself would restore a differently-shaped array silently), never set aside. A step that then fails to
    restore (truncated or corrupted files) is renamed `corrupt.<step>` (never deleted) with a warning, and the
    previous step is tried.
    """
    for step in reversed(list(self._manager.all_steps())):
      # before restoring: Orbax restores a differently-shaped array without complaint (it pads or truncates)
      self._check_same_model(step, params_target)
      try:
        return step, self.restore(step, params_target, train_target)
      except Exception as e:  # noqa: BLE001 - same model, unreadable: a damaged checkpoint
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        aside = paths.join(self.root, f"corrupt.{step}")
        if jax.process_index() == 0:
          paths.path(paths.join(self.root, str(step))).rename(aside)
        _sync(f"checkpoint-aside-{step}")
        print(f"warning: checkpoint step {step} in {self.root} cannot be restored ({reason}); moved it to {aside} "
              "and trying the previous one.", flush=True)
        self._manager.close()
        self._manager = self._open()
    return None, None

  def _check_same_model(self, step: int, params_target: Any) -> None:
    try:
      tree = _stored_tree(paths.join(self.root, str(step), "params"))
    except Exception:  # noqa: BLE001 - unreadable metadata: a damaged checkpoint, not another model
      return
    if not tree_paths(tree):  # unreadable metadata: a damaged checkpoint
      return
    tree = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree,
                        is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))
    stored, wanted = layout.is_stacked(tree), layout.is_stacked(params_target)
    if stored is not None and wanted is not None and stored != wanted:  # the other layer layout: restore converts
      params_target = layout.to_layout(params_target, stored)
    check_same_shapes(params_target, tree, f"the checkpoint {paths.join(self.root, str(step))} is of a different "
                      "model than this run's config (use another --workdir)")

  def wait(self):
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - only OS errors become a UserError
      raise self._save_failed(None, e) from None

  def close(self):
    try:
      self._manager.wait_until_finished()
    except Exception:  # noqa: BLE001
      if not self._failed:
        raise
    self._manager.close()


def _stored_tree(params_dir: str) -> Any:
  """The tree structure (leaf metadata) of a saved params item."""
  structure = ocp.StandardCheckpointer().metadata(params_dir)
  tree = getattr(structure, "item_metadata", structure)
  return getattr(tree, "tree", tree)  # orbax wraps the nested dict in a tree-metadata object


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def read_meta(path: str) -> dict:
  """The meta JSON of a bundle (newest step of a workdir), checked for the bundle format."""
  root, step = resolve(path)
  meta_file = paths.join(root, str(step), "meta", "metadata")
  if not paths.isfile(meta_file):
    raise UserError(f"checkpoint {paths.join(root, str(step))!r} has no metadata; it is not an xlm_jax bundle.")
  meta = json.loads(paths.read_text(meta_file))
  if meta.get("format") != BUNDLE_FORMAT:
    raise UserError(f"checkpoint {paths.join(root, str(step))!r} has bundle format {meta.get('format')!r}; this "
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
  params_dir = paths.join(root, str(step), "params")
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
