"""Denoising auto-encoder noise (Lample et al. 2018, as in XLM's trainer), applied to a group of sentences at once.

Sentences are the words between the framing `</s> ... </s>` (subword tokens, as in the reference, which applies
noise to BPE units); the framing never moves, drops or blanks. Order: shuffle, then dropout, then blank.
- word_shuffle k (0 = off, else > 1): token i moves to the rank of i + U(0, k) among the noisy scores, so no
  token travels more than k - 1 places.
- word_dropout p: each token is removed with probability p; at least one token always remains.
- word_blank p: each token is replaced by <mask> with probability p.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from xlm_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class NoiseConfig:
  word_shuffle: float = 0.0
  word_dropout: float = 0.0
  word_blank: float = 0.0
  mask_id: int = 5

  def __post_init__(self):
    if self.word_shuffle != 0 and self.word_shuffle <= 1:
      raise UserError(f"word_shuffle={self.word_shuffle} must be 0 (off) or greater than 1.")
    for name in ("word_dropout", "word_blank"):
      if not 0 <= getattr(self, name) < 1:
        raise UserError(f"{name}={getattr(self, name)} must be in [0, 1).")


def add_noise(rng: np.random.Generator, words: np.ndarray, lengths: np.ndarray,
              cfg: NoiseConfig) -> tuple[np.ndarray, np.ndarray]:
  """Noisy copies of k sentences. words: [k, W], row i's first lengths[i] entries are its tokens (no framing).

  Returns (words' [k, W], lengths'), left-aligned the same way (shorter when tokens are dropped)."""
  k, width = words.shape
  lengths = np.asarray(lengths, np.int64)
  valid = np.arange(width) < lengths[:, None]
  if cfg.word_shuffle > 0:
    scores = np.where(valid, np.arange(width) + rng.uniform(0, cfg.word_shuffle, size=(k, width)), np.inf)
    words = np.take_along_axis(words, np.argsort(scores, axis=1, kind="stable"), axis=1)
  if cfg.word_dropout > 0:
    keep = valid & (rng.random((k, width)) >= cfg.word_dropout)
    lost = (lengths > 0) & ~keep.any(1)
    rescue = (rng.random(k) * np.maximum(lengths, 1)).astype(np.int64)
    keep[np.flatnonzero(lost), rescue[lost]] = True
    order = np.argsort(~keep, axis=1, kind="stable")  # kept tokens first, in their order
    words = np.take_along_axis(words, order, axis=1)
    lengths = keep.sum(1)
    valid = np.arange(width) < lengths[:, None]
  if cfg.word_blank > 0:
    words = np.where(valid & (rng.random((k, width)) < cfg.word_blank), cfg.mask_id, words)
  return words.astype(np.int32), lengths
