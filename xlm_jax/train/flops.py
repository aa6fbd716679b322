"""Device peak FLOP/s, measured (MFU divides model FLOP/s by this)."""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp


@functools.lru_cache(maxsize=None)
def measured_peak_flops(dtype_name: str = "float32") -> float:
  """Best-of-5 FLOP/s of one device on a square matmul in the model's compute dtype (float32 accumulation).

  It is the ceiling a matmul-bound model could reach on this device, not a vendor figure; on CPU that is the
  honest denominator (vendor figures assume every core and vector unit busy with ideal code).
  """
  n = 2048 if jax.default_backend() == "cpu" else 8192
  dtype = jnp.bfloat16 if dtype_name == "bfloat16" else jnp.float32
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x, y: jax.lax.dot(x, y, preferred_element_type=jnp.float32))
  f(a, a).block_until_ready()
  best = float("inf")
  for _ in range(5):
    t = time.perf_counter()
    f(a, a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2.0 * n ** 3 / best
