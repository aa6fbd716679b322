"""Building blocks of the XLM Transformer: linear maps, embeddings, attention, feed-forward, layer norm.

Conventions shared by every block:
- Parameters are float32 and carry logical axis names (`vocab`, `embed`, `heads`, `kv`, `mlp`); a rules table in
  the config maps them onto the mesh. Nothing here knows about meshes.
- `dtype` is the dtype of matmul *inputs*; every matmul accumulates and returns float32
  (`preferred_element_type=float32`), so bfloat16 runs keep float32 LayerNorm, softmax and residuals. The
  training-path products go through `mixed_einsum`, whose backward pass also runs its dots on bfloat16 inputs
  (plain autodiff would hand XLA a float32 cotangent and every gradient dot would run at the float32 rate).
- Initialisation follows the reference: embeddings N(0, dim**-0.5) with the pad row zeroed, linear layers with
  PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases, LayerNorm 1/0.
- Attention has a full-sequence path (`__call__`) and an incremental one (`cached_self_attention`,
  `cached_cross_attention`) over an explicit key/value cache passed in and returned; no state is hidden in the
  module.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Axes = tuple[str | None, ...]
NEG_INF = float(jnp.finfo(jnp.float32).min)


def torch_linear_init(fan_in: int):
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default for nn.Linear weights and biases."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def embedding_init(dim: int, pad_id: int | None = None):
  """N(0, dim**-0.5), with the row of `pad_id` set to zero as in the reference's `Embedding`."""

  def init(key, shape, dtype=jnp.float32):
    table = jax.random.normal(key, shape, dtype) * dim ** -0.5
    if pad_id is not None and 0 <= pad_id < shape[0]:
      table = table.at[pad_id].set(0.0)
    return table

  return init


def sinusoidal_table(n_positions: int, dim: int) -> jnp.ndarray:
  """The reference's fixed position table: pos / 10000**(2*(j//2)/dim), sin on even columns, cos on odd ones."""
  pos = jnp.arange(n_positions, dtype=jnp.float32)[:, None]
  j = jnp.arange(dim)
  angle = pos / jnp.power(10000.0, 2 * (j // 2) / dim).astype(jnp.float32)[None, :]
  return jnp.where(j % 2 == 0, jnp.sin(angle), jnp.cos(angle))


def _einsum_f32(spec: str, a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _low_precision_einsum(spec: str, dtype, a_dtype, b_dtype, a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  return _einsum_f32(spec, a.astype(dtype), b.astype(dtype))


def _low_precision_einsum_fwd(spec, dtype, a_dtype, b_dtype, a, b):
  a, b = a.astype(dtype), b.astype(dtype)
  return _einsum_f32(spec, a, b), (a, b)  # residuals kept in the compute dtype: half the memory of float32


def swap_minor_axes(x: jnp.ndarray) -> jnp.ndarray:
  """x [N, A, B] -> [N, B, A], materialised: written as a gather with constant indices, which XLA turns into a
  copy only after it has chosen how to run the dot that reads it.

  The trap it avoids: a plain `jnp.swapaxes` (or a transpose behind any elementwise op) is folded into the
  consumer's dimension numbers, and XLA:CPU (jax 0.10) cannot run a bf16 batched dot whose left operand contracts
  its middle axis ('nqk,nqd->nkd'): it upcasts both operands to float32 and runs the dot outside its fast library,
  about 2x slower than the same product on a materialised transpose (the attention's key and value gradients).
  """
  n, a, b = x.shape
  index = (jnp.arange(b, dtype=jnp.int32)[:, None] + b * jnp.arange(a, dtype=jnp.int32)[None, :]).reshape(-1)
  return x.reshape(n, a * b)[:, index].reshape(n, b, a)


def _grad_einsum(spec: str, a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """`_einsum_f32(spec, a, b)` for the backward products. A batched product whose operands both contract their
  middle axis ('nXY,nXZ->nYZ' or '->nZY') runs as the canonical 'nYX,nXZ->nYZ' on `swap_minor_axes` of the operand
  that gives the output's rows."""
  inputs, out = spec.split("->")
  a_spec, b_spec = inputs.split(",")
  if (len(a_spec) == len(b_spec) == len(out) == 3 and a_spec[0] == b_spec[0] == out[0] and a_spec[1] == b_spec[1]
      and sorted(out[1:]) == sorted(a_spec[2] + b_spec[2])):
    if out[1] == b_spec[2]:  # the operand that gives the output's rows goes first
      a_spec, b_spec, a, b = b_spec, a_spec, b, a
    return _einsum_f32(f"{a_spec[0]}{a_spec[2]}{a_spec[1]},{b_spec}->{out}", swap_minor_axes(a), b)
  return _einsum_f32(spec, a, b)


def _low_precision_einsum_bwd(spec, dtype, a_dtype, b_dtype, residuals, g):
  a, b = residuals
  inputs, out = spec.split("->")
  a_spec, b_spec = inputs.split(",")
  g = g.astype(dtype)  # the cast plain autodiff lacks: with a float32 g, XLA:CPU upcasts both dots to float32
  return (_grad_einsum(f"{out},{b_spec}->{a_spec}", g, b).astype(a_dtype),
          _grad_einsum(f"{a_spec},{out}->{b_spec}", a, g).astype(b_dtype))


_low_precision_einsum.defvjp(_low_precision_einsum_fwd, _low_precision_einsum_bwd)


def mixed_einsum(spec: str, a: jnp.ndarray, b: jnp.ndarray, dtype=jnp.float32) -> jnp.ndarray:
  """`einsum(spec, a, b)` on inputs cast to `dtype`, accumulated and returned in float32, forward and backward.

  float32 is plain autodiff. A lower `dtype` (bfloat16) has a custom VJP that casts the incoming cotangent to
  `dtype` too, so the input-gradient and weight-gradient dots are bf16 x bf16 -> f32 as well; gradients come
  back in float32 (the dtype of `a` and `b`), accumulated in float32, never rounded to bfloat16.
  Contract: `spec` is explicit ('ab,bc->ac'), two operands, and every index appears in exactly two of the three
  terms (a plain contraction or batch index), which is what makes the two backward products einsums of the
  same form. The trap it avoids: weight gradients contract over the token axes; XLA:CPU runs those at the
  float32 rate unless both operands are bfloat16.
  """
  if jnp.dtype(dtype) == jnp.float32:
    return _einsum_f32(spec, a, b)
  return _low_precision_einsum(spec, jnp.dtype(dtype), jnp.dtype(a.dtype), jnp.dtype(b.dtype), a, b)


def _letters(n: int, start: int = 0) -> str:
  return "".join(chr(ord("a") + start + i) for i in range(n))


class Linear(nn.Module):
  """y = x . W + b contracting the last `len(in_shape)` axes of x, with float32 accumulation.

  `features` may be a tuple (e.g. (heads, head_dim)), so head splitting needs no reshape: the kernel of q/k/v is
  [embed, heads, kv] and the output kernel [heads, kv, embed]. The split is head-major, the same as the
  reference's `view(bs, -1, n_heads, dim_per_head)`.
  """

  features: Sequence[int]
  kernel_axes: Axes
  n_contract: int = 1
  dtype: jnp.dtype = jnp.float32
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    features = tuple(self.features)
    in_shape = x.shape[-self.n_contract:]
    fan_in = math.prod(in_shape)
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(torch_linear_init(fan_in), self.kernel_axes),
        in_shape + features, jnp.float32)
    batch = _letters(x.ndim - self.n_contract)
    contract = _letters(self.n_contract, len(batch))
    out = _letters(len(features), len(batch) + len(contract))
    y = mixed_einsum(f"{batch}{contract},{contract}{out}->{batch}{out}", x, kernel, self.dtype)
    if self.use_bias:
      bias = self.param(
          "bias", nn.with_logical_partitioning(torch_linear_init(fan_in), self.kernel_axes[self.n_contract:]),
          features, jnp.float32)
      y = y + bias
    return y


def threefry2x32(k0: jnp.ndarray, k1: jnp.ndarray, x0: jnp.ndarray, x1: jnp.ndarray):
  """The Threefry-2x32 block cipher, 20 rounds (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3"),
  on uint32 arrays, unrolled: the same function as `jax.extend.random.threefry2x32_p` (tests/test_model.py checks
  it), written out because that primitive's CPU lowering is a rolled loop, which XLA:CPU runs as a while loop that
  writes every round's state to memory (about 3x slower, and it does not fuse with the dropout that uses it)."""
  ks = (k0, k1, k0 ^ k1 ^ jnp.uint32(0x1BD11BDA))
  rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
  x0, x1 = x0 + ks[0], x1 + ks[1]
  for s in range(1, 6):
    for r in rotations[(s - 1) % 2]:
      x0 = x0 + x1
      x1 = ((x1 << jnp.uint32(r)) | (x1 >> jnp.uint32(32 - r))) ^ x0
    x0 = x0 + ks[s % 3]
    x1 = x1 + ks[(s + 1) % 3] + jnp.uint32(s)
  return x0, x1


def uniform_16bit(key, shape: tuple[int, ...]) -> jnp.ndarray:
  """uint16 draws of `shape`, a pure function of `key` (any key: typed, raw, any implementation).

  One Threefry-2x32 block per 4 draws, counted along the last axis within each leading index, so the counters are
  iotas of the output's own shape (a sharded output computes its shard's draws where it lives)."""
  data = jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key
  if data.shape != (2,):
    data = jax.random.bits(key, (2,), jnp.uint32)
  lead, last = tuple(shape[:-1]), shape[-1]
  blocks = lead + ((last + 3) // 4,)
  counter, stride = jnp.zeros(blocks, jnp.uint32), 1
  for axis in reversed(range(len(blocks))):
    counter = counter + lax.broadcasted_iota(jnp.uint32, blocks, axis) * jnp.uint32(stride)
    stride *= blocks[axis]
  a, b = threefry2x32(data[0], data[1], counter, jnp.zeros_like(counter))
  draws = lax.bitcast_convert_type(jnp.stack([a, b], axis=-1), jnp.uint16)  # blocks + (2, 2)
  return draws.reshape(lead + (4 * blocks[-1],))[..., :last]


class Dropout(nn.Module):
  """Inverted dropout (zero with probability `rate`, scale the rest by 1/(1-rate)), drawing 16 bits per element.

  Same contract as `flax.linen.Dropout` (an rng named 'dropout', `deterministic` at call time), cheaper on CPU:
  `jax.random.bernoulli` draws a 32-bit word per element and, with the default partitionable threefry, costs
  about 4x more there, and jax's threefry itself runs as a loop on CPU; here one unrolled Threefry-2x32 block
  yields four 16-bit draws (`uniform_16bit`, counted within each leading index, so the leading axes keep their
  sharding). The keep probability is round((1-rate) * 2**16) / 2**16, within 2**-17 of 1-rate. The masks are a
  pure function of the key, as with flax's; they are not flax's masks.
  """

  rate: float
  rng_collection: str = "dropout"

  @nn.compact
  def __call__(self, x: jnp.ndarray, deterministic: bool = True) -> jnp.ndarray:
    if deterministic or self.rate == 0.0:
      return x
    if self.rate >= 1.0:
      return jnp.zeros_like(x)
    keep = 1.0 - self.rate
    draws = uniform_16bit(self.make_rng(self.rng_collection), x.shape)
    threshold = min(round(keep * 65536), 65535)
    return jnp.where(draws < jnp.uint16(threshold), x / keep, jnp.zeros((), x.dtype))


class LayerNorm(nn.Module):
  """LayerNorm over the last axis in float32, eps 1e-12 by default (Flax's own default, 1e-6, is not XLM's)."""

  eps: float = 1e-12

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    dim = x.shape[-1]
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)), (dim,), jnp.float32)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), (dim,), jnp.float32)
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * lax.rsqrt(var + self.eps) * scale + bias


class Embedding(nn.Module):
  """A lookup table [num, dim]; `attend` gives x . table^T (the tied output projection)."""

  num: int
  dim: int
  axes: Axes
  pad_id: int | None = None
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.embedding = self.param(
        "embedding", nn.with_logical_partitioning(embedding_init(self.dim, self.pad_id), self.axes),
        (self.num, self.dim), jnp.float32)

  def __call__(self, ids: jnp.ndarray) -> jnp.ndarray:
    return jnp.take(self.embedding, ids, axis=0)

  def attend(self, x: jnp.ndarray) -> jnp.ndarray:
    batch = _letters(x.ndim - 1)
    return mixed_einsum(f"{batch}y,zy->{batch}z", x, self.embedding, self.dtype)


def attention_mask(q_segments: jnp.ndarray, k_segments: jnp.ndarray, causal: bool,
                   q_offset: jnp.ndarray | int = 0) -> jnp.ndarray:
  """Boolean [B, 1, Q, K]: query i may attend key j.

  Segment ids are 0 on padding and equal for tokens of one example (both sentences of a TLM pair share one id),
  so attention never crosses packed examples and never reads padding. Causal masks compare absolute indices in
  the row (`q_offset` shifts the query indices when decoding step by step), not positions: positions restart at
  the second sentence of a pair and must not be used to derive order or segments.
  """
  allowed = (q_segments[:, :, None] == k_segments[:, None, :]) & (k_segments[:, None, :] > 0)
  if causal:
    q_idx = jnp.arange(q_segments.shape[1])[:, None] + q_offset
    k_idx = jnp.arange(k_segments.shape[1])[None, :]
    allowed = allowed & (k_idx <= q_idx)
  return allowed[:, None, :, :]


class MultiHeadAttention(nn.Module):
  """Scaled dot-product attention with separate q/k/v/out projections (all with bias), softmax in float32.

  q is divided by sqrt(head_dim) before the product, as in the reference. Masked scores are float32's minimum
  (as transformers does), which equals -inf after the softmax unless a whole row is masked (a padded query row,
  zeroed by the caller).

  `__call__` is the full-sequence path (training, encoding). Incremental decoding uses `cached_self_attention`
  (one new query per row, keys/values written into a preallocated cache) and `cached_cross_attention` (keys and
  values of the source computed once by `source_keys_values`); both give the full path's result for the same
  prefix. `dim` is the model width (the projections need it before seeing an input).
  """

  n_heads: int
  dtype: jnp.dtype = jnp.float32
  attention_dropout: float = 0.0
  dim: int = 0

  def setup(self):
    if self.dim <= 0 or self.dim % self.n_heads:
      raise ValueError(f"MultiHeadAttention needs dim (a multiple of n_heads={self.n_heads}), got {self.dim}")
    head_dim = self.dim // self.n_heads
    proj = lambda: Linear((self.n_heads, head_dim), ("embed", "heads", "kv"), dtype=self.dtype)
    self.q_lin = proj()
    self.k_lin = proj()
    self.v_lin = proj()
    self.out_lin = Linear((self.dim,), ("heads", "kv", "embed"), n_contract=2, dtype=self.dtype)
    # Named as Linen's compact naming would: dropout keys are derived from the module path, so this keeps the
    # attention-dropout masks of a given PRNG key unchanged.
    self.Dropout_0 = Dropout(self.attention_dropout)

  def queries(self, x: jnp.ndarray) -> jnp.ndarray:
    """[B, Q, H, Dh] float32, already divided by sqrt(head_dim)."""
    return self.q_lin(x) / math.sqrt(self.dim // self.n_heads)

  def keys_values(self, kv: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Keys and values [B, K, H, Dh] float32."""
    return self.k_lin(kv), self.v_lin(kv)

  def attend(self, q, k, v, mask, deterministic: bool = True) -> jnp.ndarray:
    """softmax(q.k^T masked) . v, then the output projection: [B, Q, D]; q/k/v as from `queries`/`keys_values`."""
    # Head-major [B, H, L, Dh] so that the batch axes lead in every product, backward ones included: XLA:CPU
    # (jax 0.10) rejects some bf16 x bf16 -> f32 batched dots whose batch axes are not leading ("Unsupported
    # element type for DotThunk::Execute"), e.g. the value gradient 'bqhd,bhqk->bkhd'.
    q, k, v = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))
    # (batch, heads) merged into one leading axis: XLA:CPU runs one batch axis of small matmuls faster than two
    # (about 15% on the attention products at d=512, 8 heads, 128 tokens)
    b, h, lq, dh = q.shape
    merged = lambda t: t.reshape((b * h,) + t.shape[2:])
    scores = mixed_einsum("nqd,nkd->nqk", merged(q), merged(k), self.dtype).reshape(b, h, lq, k.shape[2])
    scores = jnp.where(mask, scores, NEG_INF)
    weights = jax.nn.softmax(scores, axis=-1)
    weights = self.Dropout_0(weights, deterministic=deterministic)
    out = mixed_einsum("nqk,nkd->nqd", merged(weights), merged(v), self.dtype).reshape(b, h, lq, dh)
    return self.out_lin(jnp.swapaxes(out, 1, 2))

  def __call__(self, x: jnp.ndarray, kv: jnp.ndarray, mask: jnp.ndarray, deterministic: bool = True) -> jnp.ndarray:
    return self.attend(self.queries(x), *self.keys_values(kv), mask, deterministic)

  # --- incremental decoding -------------------------------------------------------------------------------------
  # Cache layouts are chosen so that both products are canonical batched matmuls over (batch, heads) that read
  # the cache in place: keys transposed [.., Dh, K], values [.., K, Dh]. (With keys as [.., K, Dh], XLA:CPU
  # re-lays out the whole cache on every step.)

  def source_keys_values(self, src: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Cross-attention keys [Bs, H, Dh, S] and values [Bs, H, S, Dh] of the source [Bs, S, D], compute dtype.

    Computed once per source; every beam of a sentence reads the same copy (nothing is replicated per beam).
    Casting here is exact: the full path casts k and v to the compute dtype right before its products.
    """
    k, v = self.keys_values(src)
    return (jnp.transpose(k, (0, 2, 3, 1)).astype(self.dtype), jnp.transpose(v, (0, 2, 1, 3)).astype(self.dtype))

  def _attend_cached(self, x, q, keys_t, values, mask) -> jnp.ndarray:
    """q [Bs, H, G, Dh] against keys_t [Bs, H, Dh, K] / values [Bs, H, K, Dh] under mask [Bs, 1, G, K]."""
    batch_dims = ((0, 1), (0, 1))
    scores = lax.dot_general(q.astype(self.dtype), keys_t, (((3,), (2,)), batch_dims),
                             preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(jnp.where(mask, scores, NEG_INF), axis=-1)
    out = lax.dot_general(weights.astype(self.dtype), values, (((3,), (2,)), batch_dims),
                          preferred_element_type=jnp.float32)                          # [Bs, H, G, Dh]
    return self.out_lin(jnp.transpose(out, (0, 2, 1, 3)).reshape(x.shape[0], 1, self.n_heads, -1))

  def _grouped_queries(self, x, n_src: int) -> jnp.ndarray:
    """Queries of x [N, 1, D] as [Bs, H, G, Dh]: the G beams of a sentence act as that sentence's G queries."""
    q = self.queries(x).reshape(n_src, x.shape[0] // n_src, self.n_heads, -1)
    return jnp.transpose(q, (0, 2, 1, 3))

  def cached_cross_attention(self, x, src_keys, src_values, src_mask) -> jnp.ndarray:
    """Cross-attention of one new token per row. x [N, 1, D] with N = Bs * G rows (G beams per sentence, beam
    fastest), src_keys/src_values from `source_keys_values`, src_mask [Bs, 1, 1, S]. Returns [N, 1, D]."""
    return self._attend_cached(x, self._grouped_queries(x, src_keys.shape[0]), src_keys, src_values, src_mask)

  def cached_self_attention(self, x, keys_t, values, index, mask):
    """Causal self-attention of one new token per row over a preallocated key/value cache.

    x [N, 1, D], N = Bs * G rows (sentence-major, G beams per sentence). keys_t [Bs, H, Dh, T*G] and values
    [Bs, H, T*G, Dh] (compute dtype) are indexed by j * G + g: the entry computed at time j by the row that was
    slot g then. Rows never move when beams are reordered; `mask` [Bs, 1, G, T*G] says which entries are each
    row's own history (its ancestor's slot at every time j <= index). The G new entries are written at time
    `index` with one `lax.dynamic_update_slice` per buffer, so one compiled step serves every position.
    Returns (out [N, 1, D], keys_t, values).
    """
    n_src, n_heads, _, width = keys_t.shape
    group = x.shape[0] // n_src
    k, v = self.keys_values(x)  # [N, 1, H, Dh]
    k = jnp.transpose(k.reshape(n_src, group, n_heads, -1), (0, 2, 3, 1)).astype(self.dtype)   # [Bs, H, Dh, G]
    v = jnp.transpose(v.reshape(n_src, group, n_heads, -1), (0, 2, 1, 3)).astype(self.dtype)   # [Bs, H, G, Dh]
    keys_t = lax.dynamic_update_slice(keys_t, k, (0, 0, 0, index * group))
    values = lax.dynamic_update_slice(values, v, (0, 0, index * group, 0))
    out = self._attend_cached(x, self._grouped_queries(x, n_src), keys_t, values, mask)
    return out, keys_t, values


class FeedForward(nn.Module):
  """lin2(act(lin1(x))) with a 4*dim hidden layer; exact (erf) GELU or ReLU. Dropout is applied by the caller."""

  hidden_dim: int
  activation: str = "gelu"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    dim = x.shape[-1]
    h = Linear((self.hidden_dim,), ("embed", "mlp"), dtype=self.dtype, name="lin1")(x)
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    h = jax.nn.gelu(h, approximate=False) if self.activation == "gelu" else jax.nn.relu(h)
    return Linear((dim,), ("mlp", "embed"), dtype=self.dtype, name="lin2")(h)
