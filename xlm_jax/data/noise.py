"""Denoising auto-encoder noise (Lample et al. 2018, as in XLM's trainer), applied to one framed sentence.

The sentence is `</s> w1 ... wn </s>` (subword tokens, as in the reference, which applies noise to BPE units).
The framing tokens never move, drop or blank. Order: shuffle, then dropout, then blank.
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


def add_noise(rng: np.random.Generator, framed: np.ndarray, cfg: NoiseConfig) -> np.ndarray:
  """A noisy copy of a framed sentence (shorter when tokens are dropped)."""
  words = np.asarray(framed[1:-1])
  if words.size == 0:
    return np.asarray(framed).copy()
  if cfg.word_shuffle > 0:
    scores = np.arange(words.size) + rng.uniform(0, cfg.word_shuffle, size=words.size)
    words = words[np.argsort(scores, kind="stable")]
  if cfg.word_dropout > 0:
    keep = rng.random(words.size) >= cfg.word_dropout
    if not keep.any():
      keep[rng.integers(words.size)] = True
    words = words[keep]
  if cfg.word_blank > 0:
    words = np.where(rng.random(words.size) < cfg.word_blank, cfg.mask_id, words)
  return np.concatenate([framed[:1], words, framed[-1:]]).astype(np.int32)
