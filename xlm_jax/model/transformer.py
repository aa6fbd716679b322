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
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from xlm_jax.model.config import TransformerConfig
from xlm_jax.model.layers import (Embedding, FeedForward, LayerNorm, MultiHeadAttention, attention_mask,
                                  sinusoidal_table, torch_linear_init)

ACTIVATION_AXES = ("batch", "length", "embed")


class TransformerBlock(nn.Module):
  """One post-LN layer: self-attention, (cross-attention), feed-forward; padded positions zeroed at the end."""

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, h, self_mask, keep, deterministic: bool, src=None, cross_mask=None):
    cfg = self.cfg
    dtype = cfg.compute_dtype
    dropout = nn.Dropout(cfg.dropout)
    attn = MultiHeadAttention(cfg.n_heads, dtype, cfg.attention_dropout, name="attention")(h, h, self_mask,
                                                                                          deterministic)
    h = LayerNorm(cfg.layer_norm_eps, name="layer_norm1")(h + dropout(attn, deterministic=deterministic))
    if cfg.is_decoder:
      cross = MultiHeadAttention(cfg.n_heads, dtype, cfg.attention_dropout, name="encoder_attn")(
          h, src, cross_mask, deterministic)
      h = LayerNorm(cfg.layer_norm_eps, name="layer_norm15")(h + dropout(cross, deterministic=deterministic))
    ffn = FeedForward(cfg.ffn_dim, cfg.activation, dtype, name="ffn")(h)
    h = LayerNorm(cfg.layer_norm_eps, name="layer_norm2")(h + dropout(ffn, deterministic=deterministic))
    h = h * keep
    return nn.with_logical_constraint(h, ACTIVATION_AXES)


class Transformer(nn.Module):
  """XLM encoder (or decoder with `cfg.is_decoder`). Methods: `encode` -> hidden, `predict` -> logits.

  `__call__` runs both (it is what `init` traces, so every parameter is created).
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
    block = nn.remat(TransformerBlock, static_argnums=(4,)) if cfg.remat else TransformerBlock
    self.layers = [block(cfg) for _ in range(cfg.n_layers)]
    self.pred_bias = self.param("pred_bias", nn.with_logical_partitioning(torch_linear_init(cfg.emb_dim), ("vocab",)),
                                (cfg.vocab_size,))
    self.dropout = nn.Dropout(cfg.dropout)

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
             deterministic: bool = True, src_hidden=None, src_segment_ids=None):
    """Last-layer hidden states [B, L, D] (float32); zero at padded positions.

    Decoders (`cfg.is_decoder`) also take the encoder output `src_hidden` [B, S, D] and its `src_segment_ids`
    (derive them as `(src_tokens != pad)`); a target token attends to source tokens of its own segment.
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
    for layer in self.layers:
      h = layer(h, self_mask, keep, deterministic, src_hidden, cross_mask)
    return h

  def predict(self, hidden):
    """Logits [..., V] in float32 for hidden states [..., D] (tied input embedding plus its own bias)."""
    return self.embeddings.attend(hidden) + self.pred_bias

  def predict_at(self, hidden, index):
    """Logits [B, P, V] at positions `index` [B, P] of `hidden` [B, L, D]: the projection runs only there."""
    picked = jnp.take_along_axis(hidden, index[..., None], axis=1)
    return self.predict(picked)

  def __call__(self, tokens, positions=None, langs=None, segment_ids=None, *, causal: bool | None = None,
               deterministic: bool = True, src_hidden=None, src_segment_ids=None):
    hidden = self.encode(tokens, positions, langs, segment_ids, causal=causal, deterministic=deterministic,
                         src_hidden=src_hidden, src_segment_ids=src_segment_ids)
    return self.predict(hidden)


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
  """Model FLOPs of one training step: 3 x forward (backward = 2 x forward), projection at predicted slots only."""
  forward = n_tokens * forward_flops_per_token(cfg, seq_len) + n_predicted * 2 * cfg.emb_dim * cfg.vocab_size
  return 3.0 * forward


def init_params(cfg: TransformerConfig, rng, length: int = 8):
  """Boxed (logically partitioned) parameters of a fresh model; touches every parameter (language embeddings
  and, for decoders, cross-attention included). Wrap in `jax.eval_shape` for shapes only."""
  tokens = jnp.full((1, length), cfg.pad_id + 1, jnp.int32)
  langs = jnp.zeros((1, length), jnp.int32)
  src = jnp.zeros((1, length, cfg.emb_dim), jnp.float32) if cfg.is_decoder else None
  src_segments = jnp.ones((1, length), jnp.int32) if cfg.is_decoder else None
  return Transformer(cfg).init(rng, tokens, langs=langs, src_hidden=src, src_segment_ids=src_segments)["params"]
