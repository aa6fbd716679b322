"""The XLM Transformer (Lample & Conneau 2019) as a pure Flax Linen module.

Layout, faithful to facebookresearch/XLM `TransformerModel` (see shared/reference/xlm-reference.md section 1):

  h = E_tok[x] + E_pos[positions] (+ E_lang[langs])      no sqrt(dim) scaling
  h = LayerNorm(h) ; dropout ; h *= keep                  keep = not padding
  per layer (post-LN):
    h = LN1(h + dropout(SelfAttn(h)))
    h = LN15(h + dropout(CrossAttn(h, src)))              decoder only
    h = LN2(h + dropout(lin2(act(lin1(h)))))
    h *= keep
  logits = h . E_tok^T + pred_bias                        tied projection with its own bias

There is no final LayerNorm. Parameter names follow the reference's state dict (`embeddings`,
`position_embeddings`, `lang_embeddings`, `layer_norm_emb`, `layers_i/{attention,layer_norm1,ffn,layer_norm2,
encoder_attn,layer_norm15}`, `pred_bias`) so converters map names one to one.

Inputs are [B, L] int arrays. `segment_ids` (0 = padding) decide who attends to whom: tokens attend only within
their segment, so several examples can be packed in one row; when `segment_ids` is None it is derived from the
pad id (1 on real tokens). `positions` default to 0..L-1 in every row; TLM rows pass positions that restart at
the second sentence. Segments are never derived from positions.

Incremental decoding (NMT decoder, or CLM): `init_cache` builds an explicit `DecodeCache` pytree (self-attention
keys/values preallocated for a static maximum length, cross-attention keys/values of the source computed once),
`decode_step` takes one token per row at time t and returns the logits [N, V] and the updated cache, and
`reorder_cache` continues beams from their parents without moving any keys or values. The search itself (greedy,
beam) lives in `xlm_jax.decode`.
"""
from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from xlm_jax.model.config import TransformerConfig
from xlm_jax.model.layers import (Dropout, Embedding, FeedForward, LayerNorm, MultiHeadAttention, attention_mask,
                                  sinusoidal_table, torch_linear_init)

ACTIVATION_AXES = ("batch", "length", "embed")
KEYS_AXES = ("batch", "heads", "kv", "length")      # decode cache: keys stored transposed
VALUES_AXES = ("batch", "heads", "length", "kv")


class TransformerBlock(nn.Module):
  """One post-LN layer: self-attention, (cross-attention), feed-forward; padded positions zeroed at the end.

  `__call__` runs a whole sequence; `decode_step` runs one new token per row against a `DecodeCache`.
  """

  cfg: TransformerConfig

  def setup(self):
    cfg = self.cfg
    attention = lambda: MultiHeadAttention(cfg.n_heads, cfg.compute_dtype, cfg.attention_dropout, dim=cfg.emb_dim)
    # Named as Linen's compact naming would: dropout keys derive from the module path (masks stay unchanged).
    self.Dropout_0 = Dropout(cfg.dropout)
    self.attention = attention()
    self.layer_norm1 = LayerNorm(cfg.layer_norm_eps)
    if cfg.is_decoder:
      self.encoder_attn = attention()
      self.layer_norm15 = LayerNorm(cfg.layer_norm_eps)
    self.ffn = FeedForward(cfg.ffn_dim, cfg.activation, cfg.compute_dtype)
    self.layer_norm2 = LayerNorm(cfg.layer_norm_eps)

  def __call__(self, h, self_mask, keep, deterministic: bool, src=None, cross_mask=None, rows=None):
    """The layer on h [B, L, D]; with `rows` [B, P] (positions in the row) only those rows come out, [B, P, D]:
    queries, feed-forward and layer norms run at P positions, keys and values still at all L."""
    dropout = lambda x: self.Dropout_0(x, deterministic=deterministic)
    q = h
    if rows is not None:
      q, keep = pick_rows(h, rows), pick_rows(keep, rows)
      self_mask = pick_rows(self_mask, rows, axis=2)
      cross_mask = None if cross_mask is None else pick_rows(cross_mask, rows, axis=2)
    h = self.layer_norm1(q + dropout(self.attention(q, h, self_mask, deterministic)))
    if self.cfg.is_decoder:
      h = self.layer_norm15(h + dropout(self.encoder_attn(h, src, cross_mask, deterministic)))
    h = self.layer_norm2(h + dropout(self.ffn(h)))
    h = h * keep
    return nn.with_logical_constraint(h, ACTIVATION_AXES)

  def source_keys_values(self, src):
    """Cross-attention keys [Bs, H, Dh, S] / values [Bs, H, S, Dh] of the encoder output for `DecodeCache`."""
    return self.encoder_attn.source_keys_values(src)

  def decode_step(self, h, keys, values, index, self_mask, src_keys=None, src_values=None, src_mask=None):
    """The layer for one new token per row (h [N, 1, D]), no dropout; returns (h, keys, values).

    The row is never padding (decoding feeds a real token, or a finished row's filler whose output is ignored),
    so the `keep` multiply of the full path is the identity here.
    """
    attn, keys, values = self.attention.cached_self_attention(h, keys, values, index, self_mask)
    h = self.layer_norm1(h + attn)
    if self.cfg.is_decoder:
      h = self.layer_norm15(h + self.encoder_attn.cached_cross_attention(h, src_keys, src_values, src_mask))
    h = self.layer_norm2(h + self.ffn(h))
    return nn.with_logical_constraint(h, ACTIVATION_AXES), keys, values


def pick_rows(x: jnp.ndarray, rows: jnp.ndarray, axis: int = 1) -> jnp.ndarray:
  """x at positions `rows` [B, P] along `axis` (x [B, ..., L, ...]; axes between 0 and `axis` are broadcast)."""
  index = rows.reshape(rows.shape[:1] + (1,) * (axis - 1) + rows.shape[1:] + (1,) * (x.ndim - axis - 1))
  return jnp.take_along_axis(x, index, axis=axis)


class ScanStep(TransformerBlock):
  """`TransformerBlock` as the body of `nn.scan`: returns (carry, no output)."""

  def __call__(self, h, self_mask, keep, deterministic: bool, src=None, cross_mask=None):
    return super().__call__(h, self_mask, keep, deterministic, src, cross_mask), None


def _remat(block, policy: str):
  """`block` recomputed in the backward pass under `policy` (see TransformerConfig.remat); `deterministic`
  (argument 4, counting self) is static."""
  if policy == "none":
    return block
  return nn.remat(block, static_argnums=(4,),
                  policy=jax.checkpoint_policies.dots_saveable if policy == "dots_saveable" else None)


class DecodeCache(NamedTuple):
  """Everything incremental decoding carries from one step to the next: an explicit pytree, no hidden state.

  Rows are sentence-major: row n = b * G + g is beam (slot) g of sentence b; greedy decoding is G = 1.
  - `keys` [Bs, H, Dh, T*G] (transposed) and `values` [Bs, H, T*G, Dh], per layer, in the compute dtype. Entry
    j * G + g holds the self-attention key/value computed at time j by the row that was slot g then. Entries are
    written once and never moved. (These layouts make both attention products plain batched matmuls.)
  - `slots`: int32 [Bs, G, T]; `slots[b, g, j]` is the slot whose entry at time j belongs to the prefix that row
    (b, g) continues (meaningful for j below the next step's index). Reordering beams rewrites only this table
    (`reorder_cache`), O(G*T) integers per sentence instead of gathering every layer's keys and values.
  - `src_keys` [Bs, H, Dh, S] and `src_values` [Bs, H, S, Dh], per layer: the cross-attention keys/values of the
    encoder output, computed once and shared by the G beams of a sentence (empty tuples without cross-attention).
  - `src_mask`: bool [Bs, 1, 1, S], the real source tokens (None without cross-attention).
  """

  keys: tuple
  values: tuple
  slots: jnp.ndarray
  src_keys: tuple
  src_values: tuple
  src_mask: jnp.ndarray | None


def reorder_cache(cache: DecodeCache, parents: jnp.ndarray) -> DecodeCache:
  """Row (b, g) continues the prefix of row (b, parents[b, g]) (parents int [Bs, G], slots of the same sentence).

  Beams never move across sentences, so the shared source keys/values need no reordering; only the slot table
  is gathered.
  """
  return cache._replace(slots=jnp.take_along_axis(cache.slots, parents[:, :, None].astype(jnp.int32), axis=1))


class Transformer(nn.Module):
  """XLM encoder (or decoder with `cfg.is_decoder`). Methods: `encode` -> hidden, `predict` -> logits,
  `init_cache` / `decode_step` for incremental decoding.

  `__call__` runs both `encode` and `predict` (it is what `init` traces, so every parameter is created).
  """

  cfg: TransformerConfig

  def setup(self):
    cfg = self.cfg
    dtype = cfg.compute_dtype
    self.embeddings = Embedding(cfg.vocab_size, cfg.emb_dim, ("vocab", "embed"), cfg.pad_id, dtype=dtype)
    if not cfg.sinusoidal_embeddings:
      self.position_embeddings = Embedding(cfg.max_positions, cfg.emb_dim, (None, "embed"))
    if cfg.has_lang_emb:
      self.lang_embeddings = Embedding(cfg.n_langs, cfg.emb_dim, (None, "embed"))
    self.layer_norm_emb = LayerNorm(cfg.layer_norm_eps)
    if cfg.scan_layers:  # one scanned layer, parameters stacked on a leading `layers` axis
      self.layers = nn.scan(_remat(ScanStep, cfg.remat), variable_axes={"params": 0},
                            split_rngs={"params": True, "dropout": True}, in_axes=(nn.broadcast,) * 5,
                            length=cfg.n_layers, metadata_params={nn.PARTITION_NAME: "layers"})(cfg)
    else:
      self.layers = [_remat(TransformerBlock, cfg.remat)(cfg) for _ in range(cfg.n_layers)]
    self.pred_bias = self.param("pred_bias", nn.with_logical_partitioning(torch_linear_init(cfg.emb_dim), ("vocab",)),
                                (cfg.vocab_size,))
    self.dropout = Dropout(cfg.dropout)

  def embed(self, tokens, positions, langs):
    cfg = self.cfg
    h = self.embeddings(tokens)
    if cfg.sinusoidal_embeddings:
      h = h + jnp.take(sinusoidal_table(cfg.max_positions, cfg.emb_dim), positions, axis=0)
    else:
      h = h + self.position_embeddings(positions)
    if cfg.has_lang_emb and langs is not None:
      langs = jnp.asarray(langs)
      if langs.ndim < tokens.ndim:  # one language per row (or one for all): broadcast over tokens
        langs = jnp.broadcast_to(langs.reshape(langs.shape + (1,) * (tokens.ndim - langs.ndim)), tokens.shape)
      h = h + self.lang_embeddings(langs)
    return self.layer_norm_emb(h)

  def encode(self, tokens, positions=None, langs=None, segment_ids=None, *, causal: bool | None = None,
             deterministic: bool = True, src_hidden=None, src_segment_ids=None, rows=None):
    """Last-layer hidden states [B, L, D] (float32); zero at padded positions.

    Decoders (`cfg.is_decoder`) also take the encoder output `src_hidden` [B, S, D] and its `src_segment_ids`
    (derive them as `(src_tokens != pad)`); a target token attends to source tokens of its own segment.

    `rows` [B, P] (positions in the row): only the hidden states there, [B, P, D], equal to `encode(...)` picked
    at `rows`. Unrolled layers compute the last layer only at those rows (its keys and values still cover the whole
    row): at 15% predicted positions that skips most of a layer's work, forward and backward, for MLM/TLM.
    With `scan_layers` every layer runs on the whole row and the rows are picked afterwards (same result).
    """
    cfg = self.cfg
    causal = cfg.causal if causal is None else causal
    if segment_ids is None:
      segment_ids = (tokens != cfg.pad_id).astype(jnp.int32)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    keep = (segment_ids > 0)[..., None].astype(jnp.float32)
    h = self.embed(tokens, positions, langs)
    h = self.dropout(h, deterministic=deterministic) * keep
    h = nn.with_logical_constraint(h, ACTIVATION_AXES)
    self_mask = attention_mask(segment_ids, segment_ids, causal)
    cross_mask = None
    if cfg.is_decoder:
      if src_hidden is None or src_segment_ids is None:
        raise ValueError("a decoder needs src_hidden and src_segment_ids")
      cross_mask = attention_mask(segment_ids, src_segment_ids, False)
    if cfg.scan_layers:
      h = self.layers(h, self_mask, keep, deterministic, src_hidden, cross_mask)[0]
      return h if rows is None else pick_rows(h, rows)
    if not self.layers:
      return h if rows is None else pick_rows(h, rows)
    for i, layer in enumerate(self.layers):
      last = i == len(self.layers) - 1
      h = layer(h, self_mask, keep, deterministic, src_hidden, cross_mask, rows if last else None)
    return h

  def predict(self, hidden):
    """Logits [..., V] in float32 for hidden states [..., D] (tied input embedding plus its own bias)."""
    return self.embeddings.attend(hidden) + self.pred_bias

  def predict_at(self, hidden, index):
    """Logits [B, P, V] at positions `index` [B, P] of `hidden` [B, L, D]: the projection runs only there."""
    return self.predict(pick_rows(hidden, index))

  # --- incremental decoding -------------------------------------------------------------------------------------

  def _check_unrolled(self):
    if self.cfg.scan_layers:
      raise ValueError("incremental decoding runs layer by layer: build the model with scan_layers=False and "
                       "convert the parameters with xlm_jax.model.layout.to_layout(params, scan_layers=False)")

  def init_cache(self, max_len: int, *, beams: int = 1, src_hidden=None, src_segment_ids=None,
                 batch: int | None = None) -> DecodeCache:
    """An empty `DecodeCache` for `batch` sentences x `beams` rows each and at most `max_len` target tokens.

    Decoders take the encoder output `src_hidden` [Bs, S, D] and its `src_segment_ids` [Bs, S] (0 = padding); the
    cross-attention keys/values of every layer are computed here, once. A source row must hold one segment (one
    sentence): the decoded token attends to the source tokens of segment 1, as the full path's segment-1 target.
    Non-decoders (incremental CLM) pass `batch` instead.
    """
    cfg = self.cfg
    self._check_unrolled()
    if cfg.is_decoder:
      if src_hidden is None or src_segment_ids is None:
        raise ValueError("a decoder's cache needs src_hidden and src_segment_ids")
      batch = src_hidden.shape[0]
      kv = [layer.source_keys_values(src_hidden) for layer in self.layers]
      src_keys, src_values = tuple(k for k, _ in kv), tuple(v for _, v in kv)
      src_mask = attention_mask(jnp.ones((batch, 1), jnp.int32), src_segment_ids, False)
    else:
      if batch is None:
        raise ValueError("init_cache needs `batch` for a model without cross-attention")
      src_keys, src_values, src_mask = (), (), None
    zeros = lambda axes, *shape: nn.with_logical_constraint(jnp.zeros(shape, cfg.compute_dtype), axes)
    width = max_len * beams
    return DecodeCache(keys=tuple(zeros(KEYS_AXES, batch, cfg.n_heads, cfg.head_dim, width) for _ in self.layers),
                       values=tuple(zeros(VALUES_AXES, batch, cfg.n_heads, width, cfg.head_dim)
                                    for _ in self.layers),
                       slots=jnp.zeros((batch, beams, max_len), jnp.int32), src_keys=src_keys,
                       src_values=src_values, src_mask=src_mask)

  def decode_step(self, tokens, index, langs, cache: DecodeCache):
    """Logits [N, V] (float32) for the next token of every row, and the updated cache.

    `tokens` [N] are the tokens at time `index` (a traced int32 scalar: one compiled step serves every time),
    N = Bs * G rows as in the cache. The position of the token is `index` in every row: positions restart at 0
    for a target, whatever the source length. `langs` ([N] ids, or None) is the *target* language; for an NMT
    decoder its embedding is the only signal of the output language (the first token is always `</s>`). Equal
    to the full-sequence forward's logits at `index` for the same prefix (see tests/test_decode.py).
    """
    self._check_unrolled()
    n_src, n_beams, max_len = cache.slots.shape
    index = jnp.asarray(index, jnp.int32)
    tokens = tokens[:, None]
    positions = jnp.broadcast_to(index, tokens.shape)
    h = self.embed(tokens, positions, None if langs is None else jnp.asarray(langs).reshape(tokens.shape))
    h = nn.with_logical_constraint(h, ACTIVATION_AXES)
    own = jnp.broadcast_to(jnp.arange(n_beams, dtype=jnp.int32)[None, :, None], (n_src, n_beams, 1))
    slots = lax.dynamic_update_slice(cache.slots, own, (0, 0, index))
    # row (b, g) reads, at each time j <= index, the one entry j * G + slot of its ancestor: [Bs, 1, G, T*G]
    mine = slots[:, :, :, None] == jnp.arange(n_beams, dtype=jnp.int32)[None, None, None, :]
    self_mask = (mine & (jnp.arange(max_len) <= index)[:, None]).reshape(n_src, 1, n_beams, max_len * n_beams)
    keys, values = [], []
    for i, layer in enumerate(self.layers):
      h, k, v = layer.decode_step(h, cache.keys[i], cache.values[i], index, self_mask,
                                  *((cache.src_keys[i], cache.src_values[i], cache.src_mask)
                                    if self.cfg.is_decoder else ()))
      keys.append(nn.with_logical_constraint(k, KEYS_AXES))
      values.append(nn.with_logical_constraint(v, VALUES_AXES))
    logits = nn.with_logical_constraint(self.predict(h[:, 0]), ("batch", "vocab"))
    return logits, cache._replace(keys=tuple(keys), values=tuple(values), slots=slots)

  def __call__(self, tokens, positions=None, langs=None, segment_ids=None, *, causal: bool | None = None,
               deterministic: bool = True, src_hidden=None, src_segment_ids=None):
    hidden = self.encode(tokens, positions, langs, segment_ids, causal=causal, deterministic=deterministic,
                         src_hidden=src_hidden, src_segment_ids=src_segment_ids)
    return self.predict(hidden)


class EncoderDecoder(nn.Module):
  """The NMT model: an XLM encoder and an XLM decoder (with cross-attention) as ONE Linen module, as Flax's
  examples/wmt/models.py. Parameters are `{"encoder": ..., "decoder": ...}` (the layout of NMT bundles).

  Apply it once per step (`encode` then `decode` inside one `apply`, or `__call__`): every dropout mask then derives
  from the module path (`encoder/...` vs `decoder/...`). The trap this removes: two separate `apply` calls of
  same-named modules with one dropout key draw IDENTICAL masks in the encoder and the decoder whenever source
  and target have the same shape.

  `init_cache` / `decode_step` serve incremental decoding (`xlm_jax.decode`) and touch only the decoder.
  """

  enc_cfg: TransformerConfig
  dec_cfg: TransformerConfig

  def setup(self):
    self.encoder = Transformer(self.enc_cfg)
    self.decoder = Transformer(self.dec_cfg)

  def encode(self, tokens, positions=None, langs=None, segment_ids=None, *, deterministic: bool = True):
    """Encoder output [B, S, D] (non-causal); zero at padded positions."""
    return self.encoder.encode(tokens, positions, langs, segment_ids, causal=False, deterministic=deterministic)

  def decode(self, tokens, positions, langs, segment_ids, src_hidden, src_segment_ids, index=None, *,
             deterministic: bool = True):
    """Decoder logits (causal, attending to `src_hidden`): at positions `index` [B, P] when given (the vocabulary
    projection runs only there), else at every position."""
    hidden = self.decoder.encode(tokens, positions, langs, segment_ids, causal=True, deterministic=deterministic,
                                 src_hidden=src_hidden, src_segment_ids=src_segment_ids)
    return self.decoder.predict(hidden) if index is None else self.decoder.predict_at(hidden, index)

  def init_cache(self, max_len: int, *, beams: int = 1, src_hidden=None, src_segment_ids=None) -> DecodeCache:
    return self.decoder.init_cache(max_len, beams=beams, src_hidden=src_hidden, src_segment_ids=src_segment_ids)

  def decode_step(self, tokens, index, langs, cache: DecodeCache):
    return self.decoder.decode_step(tokens, index, langs, cache)

  def __call__(self, src_tokens, src_positions, src_langs, src_segment_ids, tgt_tokens, tgt_positions, tgt_langs,
               tgt_segment_ids, index=None, *, deterministic: bool = True):
    """Target logits of a (source, target) batch: `encode` then `decode`, in one apply."""
    hidden = self.encode(src_tokens, src_positions, src_langs, src_segment_ids, deterministic=deterministic)
    return self.decode(tgt_tokens, tgt_positions, tgt_langs, tgt_segment_ids, hidden, src_segment_ids, index,
                       deterministic=deterministic)


def forward_flops_per_token(cfg: TransformerConfig, seq_len: int, src_len: int = 0) -> float:
  """Matmul FLOPs of one forward pass per input token, without the output projection.

  Projections 2*(4 d^2) + FFN 2*(2 * d * 4d) per layer, and non-causal attention 4 * seq_len * d per layer
  (scores and weighted sum); decoders add cross-attention. Embedding lookups are not counted.
  """
  d = cfg.emb_dim
  per_layer = 2 * 4 * d * d + 2 * 2 * d * cfg.ffn_dim + 4 * seq_len * d
  if cfg.is_decoder:
    per_layer += 2 * 4 * d * d + 4 * src_len * d
  return float(cfg.n_layers * per_layer)


def train_flops(cfg: TransformerConfig, n_tokens: int, seq_len: int, n_predicted: int) -> float:
  """Model FLOPs of one MLM/TLM/CLM training step as `make_loss` runs it: 3 x forward (backward = 2 x forward).

  The vocabulary projection runs at the `n_predicted` slots only and, with unrolled layers, so does the last layer
  (`Transformer.encode(rows=)`) except its key and value projections, which cover all `n_tokens`. Counting what
  is computed, not what a full pass would compute, keeps MFU honest."""
  d = cfg.emb_dim
  forward = n_predicted * 2 * d * cfg.vocab_size
  if cfg.n_layers:
    per_layer = forward_flops_per_token(cfg, seq_len) / cfg.n_layers
    if cfg.scan_layers:
      forward += n_tokens * cfg.n_layers * per_layer
    else:
      keys_values = 2 * 2 * d * d
      forward += (n_tokens * ((cfg.n_layers - 1) * per_layer + keys_values)
                  + n_predicted * (per_layer - keys_values))
  return 3.0 * forward


def init_params(cfg: TransformerConfig, rng, length: int = 8):
  """Boxed (logically partitioned) parameters of a fresh model; touches every parameter (language embeddings
  and, for decoders, cross-attention included). Wrap in `jax.eval_shape` for shapes only."""
  tokens = jnp.full((1, length), cfg.pad_id + 1, jnp.int32)
  langs = jnp.zeros((1, length), jnp.int32)
  src = jnp.zeros((1, length, cfg.emb_dim), jnp.float32) if cfg.is_decoder else None
  src_segments = jnp.ones((1, length), jnp.int32) if cfg.is_decoder else None
  return Transformer(cfg).init(rng, tokens, langs=langs, src_hidden=src, src_segment_ids=src_segments)["params"]


def init_encoder_decoder(enc_cfg: TransformerConfig, dec_cfg: TransformerConfig, rng, length: int = 8):
  """Boxed parameters `{"encoder": ..., "decoder": ...}` of a fresh `EncoderDecoder` (every parameter touched)."""
  tokens = jnp.full((1, length), enc_cfg.pad_id + 1, jnp.int32)
  langs = jnp.zeros((1, length), jnp.int32)
  ones = jnp.ones((1, length), jnp.int32)
  return EncoderDecoder(enc_cfg, dec_cfg).init(rng, tokens, None, langs, ones, tokens, None, langs, ones)["params"]
