"""The train state and its sharded creation: eval_shape -> logical specs -> NamedShardings -> jit(init)."""
from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from xlm_jax import parallel


@flax.struct.dataclass
class TrainState:
  """Everything a step changes: the step counter, parameters, optimizer moments and the base PRNG key.

  `rng` is raw key data (uint32[2]) so that it checkpoints like any array; per-step keys are
  fold_in(rng, step), which makes a resumed run draw the same dropout masks as an uninterrupted one.
  """

  step: jnp.ndarray
  params: Any
  opt_state: Any
  rng: jnp.ndarray


def strip_boxes(tree: Any) -> Any:
  """The values inside logical-partitioning boxes (no sharding constraint applied, unlike `nn.unbox` under a
  mesh context)."""
  return jax.tree.map(lambda x: x.value if isinstance(x, nn.meta.AxisMetadata) else x, tree,
                      is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def sharded_state_layout(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation, seed: int,
                         mesh, rules):
  """How to create the train state directly on the mesh (never whole on one device).

  `init_params(rng)` returns boxed (logically partitioned) parameters; the optimizer moments inherit the
  parameters' logical axes because the optimizer is initialised on the boxed tree inside `eval_shape`.

  Returns (create, target, shardings): `create()` builds a fresh sharded state; `target` is a tree of
  ShapeDtypeStructs with the shardings (what a checkpoint restore needs); `shardings` is the NamedSharding tree
  for jit's in/out_shardings.
  """
  def boxed_state(rng):
    init_rng, state_rng = jax.random.split(rng)
    params = init_params(init_rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.key_data(state_rng))

  rng = jax.random.key(seed)
  abstract = jax.eval_shape(boxed_state, rng)
  shardings = parallel.logical_shardings(abstract, mesh, rules)
  unboxed = strip_boxes(abstract)
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), unboxed, shardings)
  create = lambda: jax.jit(lambda r: nn.unbox(boxed_state(r)), out_shardings=shardings)(rng)
  return create, target, shardings
