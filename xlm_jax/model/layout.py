"""The two parameter layouts of the layer stack, and the conversion between them.

Unrolled (`scan_layers=False`): `layers_0`, ..., `layers_{n-1}`, one subtree per layer. Stacked
(`scan_layers=True`): one `layers` subtree whose leaves carry a leading axis of length n (what `nn.scan` creates).
`to_layout` converts any tree that contains parameter dicts (parameters, Adam moments inside an optax state,
abstract `ShapeDtypeStruct` targets with their shardings) from one layout to the other; checkpoints are restored in
the layout they were written in and converted (see `xlm_jax.checkpoint`), so a run may switch `scan_layers` when
it resumes. The trap: only dicts that hold `layers_0` (or a `layers` dict) are touched; a leaf named `layers` that
is not a dict (no such parameter exists today) would be left alone.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P


def is_stacked(tree: Any) -> bool | None:
  """True for the stacked layout, False for unrolled, None when no layer stack is found."""
  if isinstance(tree, Mapping):
    if "layers_0" in tree:
      return False
    if isinstance(tree.get("layers"), Mapping):
      return True
    for value in tree.values():
      found = is_stacked(value)
      if found is not None:
        return found
  elif isinstance(tree, (tuple, list)):
    for value in tree:
      found = is_stacked(value)
      if found is not None:
        return found
  return None


def _stack_leaves(*leaves):
  first = leaves[0]
  if isinstance(first, jax.ShapeDtypeStruct):
    sharding = first.sharding
    if isinstance(sharding, NamedSharding):
      sharding = NamedSharding(sharding.mesh, P(None, *sharding.spec))
    return jax.ShapeDtypeStruct((len(leaves),) + tuple(first.shape), first.dtype, sharding=sharding)
  if isinstance(first, np.ndarray):
    return np.stack(leaves)
  return jnp.stack(leaves)


def _unstack_leaf(leaf, i: int):
  if isinstance(leaf, jax.ShapeDtypeStruct):
    sharding = leaf.sharding
    if isinstance(sharding, NamedSharding):
      sharding = NamedSharding(sharding.mesh, P(*tuple(sharding.spec)[1:]))
    return jax.ShapeDtypeStruct(tuple(leaf.shape[1:]), leaf.dtype, sharding=sharding)
  return leaf[i]


def to_layout(tree: Any, scan_layers: bool) -> Any:
  """`tree` with every layer stack in the stacked (`scan_layers=True`) or unrolled layout.

  Arrays are stacked with jnp/np (the result's sharding is whatever XLA picks: device_put it onto the target's
  shardings afterwards); ShapeDtypeStructs get a leading (or lose their leading) unsharded axis."""
  if isinstance(tree, Mapping):
    items = {k: to_layout(v, scan_layers) for k, v in tree.items()}
    if scan_layers and "layers_0" in items:
      n = sum(1 for k in items if k.startswith("layers_") and k[len("layers_"):].isdigit())
      layers = [items.pop(f"layers_{i}") for i in range(n)]
      items["layers"] = jax.tree.map(_stack_leaves, *layers)
    elif not scan_layers and isinstance(items.get("layers"), Mapping):
      stacked = items.pop("layers")
      n = int(jax.tree.leaves(stacked)[0].shape[0])
      for i in range(n):
        items[f"layers_{i}"] = jax.tree.map(lambda x: _unstack_leaf(x, i), stacked)
    return type(tree)(items) if not isinstance(tree, dict) else items
  if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # namedtuples (optax states)
    return type(tree)(*(to_layout(v, scan_layers) for v in tree))
  if isinstance(tree, (tuple, list)):
    return type(tree)(to_layout(v, scan_layers) for v in tree)
  return tree
