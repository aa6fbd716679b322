"""The XLM sentence(-pair) classifier: the encoder, then the reference's head on the first `</s>`.

As facebookresearch/XLM's XNLI/GLUE fine-tuning (xlm/model/embedder.py, xlm/evaluation/xnli.py): the sentence
representation is the last-layer hidden state at the example's first token (its leading `</s>`), no pooler and
no tanh; the head is dropout then one linear layer to the classes. Parameters: `{"encoder": <Transformer params,
the same tree as a pretraining bundle's>, "head": {"kernel": [D, C], "bias": [C]}}`.

Several examples may share a row (packed, `segment_ids` 1, 2, ...; attention stays within a segment): `index`
[B, K] names the first token of each example of a row and the logits come back as [B, K, C].
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from xlm_jax.model.config import TransformerConfig
from xlm_jax.model.layers import Dropout, Linear
from xlm_jax.model.transformer import Transformer


class Classifier(nn.Module):
  """Encoder + head. `__call__(tokens, positions, langs, segment_ids, index)` -> logits [B, K, n_classes]."""

  cfg: TransformerConfig
  n_classes: int
  head_dropout: float = 0.0

  def setup(self):
    self.encoder = Transformer(self.cfg)
    self.head_drop = Dropout(self.head_dropout)
    self.head = Linear((self.n_classes,), ("embed", None), dtype=jnp.float32)

  def __call__(self, tokens, positions, langs, segment_ids, index, *, deterministic: bool = True):
    hidden = self.encoder.encode(tokens, positions, langs, segment_ids, deterministic=deterministic)
    first = jnp.take_along_axis(hidden, index[..., None], axis=1).astype(jnp.float32)
    return self.head(self.head_drop(first, deterministic=deterministic))

  def init_all(self, tokens, langs):
    """Touches every parameter (the encoder's MLM output bias included, so a classifier tree holds a whole
    pretraining tree under `encoder`)."""
    self.encoder(tokens, langs=langs)
    return self(tokens, None, langs, None, jnp.zeros((tokens.shape[0], 1), jnp.int32))


def init_classifier(cfg: TransformerConfig, n_classes: int, rng, head_dropout: float = 0.0, length: int = 8):
  """Boxed parameters of a fresh classifier (wrap in `jax.eval_shape` for shapes only)."""
  tokens = jnp.full((1, length), cfg.pad_id + 1, jnp.int32)
  langs = jnp.zeros((1, length), jnp.int32)
  return Classifier(cfg, n_classes, head_dropout).init(rng, tokens, langs, method="init_all")["params"]
