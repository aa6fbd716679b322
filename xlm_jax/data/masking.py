"""Prediction targets for MLM and CLM rows, with a fixed number of prediction slots per row.

A row of length L gets P = ceil(word_pred * L) MLM slots (L - 1 for CLM), so batch shapes never change under
jit and the vocabulary projection runs only at these slots. Each slot holds a position (`index`), the original
token (`target`) and a weight (1 for a real prediction, 0 for an unused slot).

MLM, as in the reference (`Trainer.mask_out`), with one deliberate difference stated here:
- the number of predictions in a row is `word_pred * n_eligible` (stochastically rounded, at least 1), drawn
  without replacement, uniformly when `sample_alpha == 0` and with p ~ count(token)**-sample_alpha otherwise
  (specials never chosen then); the reference draws a Bernoulli(word_pred) per token when sample_alpha == 0. The
  expected number of predictions is the same; a fixed count keeps the slot array exact.
- each chosen token becomes <mask> / stays / becomes a random token with probabilities `mask_keep_rand`
  (0.8, 0.1, 0.1); random tokens are drawn from the non-special ids (the reference can draw <pad> or </s>).
- padding (segment 0) is never predicted. Evaluation uses 100% <mask> and a fixed seed, as the reference's
  evaluator does.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class MaskingConfig:
  vocab_size: int
  mask_id: int
  n_special: int  # ids below this are specials: never a random replacement
  word_pred: float = 0.15
  mask_keep_rand: tuple[float, float, float] = (0.8, 0.1, 0.1)
  sample_alpha: float = 0.0

  @functools.cached_property
  def mode_cdf(self) -> np.ndarray:
    """Cumulative mask/keep/random probabilities, normalised as `Generator.choice(3, p=...)` does internally."""
    cdf = np.cumsum(np.asarray(self.mask_keep_rand, np.float64))
    return cdf / cdf[-1]

  def __post_init__(self):
    if abs(sum(self.mask_keep_rand) - 1.0) > 1e-6 or min(self.mask_keep_rand) < 0:
      from xlm_jax.errors import UserError
      raise UserError(f"word_mask_keep_rand={self.mask_keep_rand} must be three non-negative numbers summing to 1.")
    if not 0.0 < self.word_pred < 1.0:
      from xlm_jax.errors import UserError
      raise UserError(f"word_pred={self.word_pred} must be between 0 and 1.")


def mlm_slots(length: int, word_pred: float) -> int:
  return max(1, math.ceil(word_pred * length))


def mask_row(rng: np.random.Generator, tokens: np.ndarray, eligible: np.ndarray, cfg: MaskingConfig,
             n_slots: int, token_scores: np.ndarray | None = None):
  """Mask one row. Returns (inputs [L], index [P], targets [P], weights [P]).

  Contract: the draws from `rng` (their number and order) are part of the batch definition: changing them
  changes every batch of every seed, so keep any rewrite draw-for-draw identical (batch checksums tell)."""
  index = np.zeros(n_slots, np.int32)
  targets = np.zeros(n_slots, np.int32)
  weights = np.zeros(n_slots, np.float32)
  inputs = tokens.copy()
  candidates = np.flatnonzero(eligible)
  if token_scores is not None:
    candidates = candidates[token_scores[tokens[candidates]] > 0]
  if candidates.size == 0:
    return inputs, index, targets, weights
  expected = cfg.word_pred * candidates.size
  n = int(math.floor(expected + rng.random()))
  n = min(max(n, 1), n_slots, candidates.size)
  if token_scores is None:
    chosen = rng.choice(candidates, size=n, replace=False)
  else:
    p = token_scores[tokens[candidates]].astype(np.float64)
    chosen = rng.choice(candidates, size=n, replace=False, p=p / p.sum())
  chosen.sort()
  index[:n] = chosen
  targets[:n] = tokens[chosen]
  weights[:n] = 1.0
  # = rng.choice(3, size=n, p=cfg.mask_keep_rand), draw for draw (numpy's own algorithm), without its ~25 us of
  # argument checks per call
  mode = cfg.mode_cdf.searchsorted(rng.random(n), side="right")
  randoms = rng.integers(cfg.n_special, cfg.vocab_size, size=n)
  inputs[chosen] = np.where(mode == 0, cfg.mask_id, np.where(mode == 1, tokens[chosen], randoms))
  return inputs, index, targets, weights


def clm_row(tokens: np.ndarray, segments: np.ndarray):
  """Next-token targets: position t predicts t+1 when both are real tokens of the same segment."""
  index = np.arange(tokens.shape[0] - 1, dtype=np.int32)
  targets = tokens[1:].astype(np.int32)
  weights = ((segments[1:] == segments[:-1]) & (segments[1:] > 0)).astype(np.float32)
  return tokens.copy(), index, targets, weights


def frequency_scores(counts: np.ndarray, sample_alpha: float, n_special: int) -> np.ndarray:
  """max(count, 1)**-sample_alpha per token id, 0 for specials (never masked when sampling by frequency)."""
  scores = np.maximum(counts.astype(np.float64), 1.0) ** (-sample_alpha)
  scores[:n_special] = 0.0
  return scores
