"""Prediction targets for MLM and CLM rows, with a fixed number of prediction slots per row, over whole row groups.

A row of length L gets P = ceil(word_pred * L) MLM slots (L - 1 for CLM), so batch shapes never change under
jit and the vocabulary projection runs only at these slots. Each slot holds a position (`index`), the original
token (`target`) and a weight (1 for a real prediction, 0 for an unused slot).

MLM, as in the reference (`Trainer.mask_out`), with the deliberate differences stated here:
- the number of predictions in a row is `word_pred * n_eligible` (stochastically rounded, at least 1), drawn
  without replacement, uniformly when `sample_alpha == 0` and with p ~ count(token)**-sample_alpha otherwise
  (specials never chosen then); the reference draws a Bernoulli(word_pred) per token when sample_alpha == 0. The
  expected number of predictions is the same; a fixed count keeps the slot array exact.
- each chosen token becomes <mask> / stays / becomes a random token with probabilities `mask_keep_rand`
  (0.8, 0.1, 0.1); random tokens are drawn from the ids that are not special (`special_ids`: <s> </s> <pad> <unk>
  <special0> <mask> and the language tags), where the reference can draw <pad> or </s>.
- padding (segment 0) is never predicted. Evaluation uses 100% <mask> and a fixed seed, as the reference's
  evaluator does.

Vectorised: a group of rows [n, L] is masked with a handful of numpy calls. Sampling k of a row's candidates
without replacement is the k smallest of one random key per token: uniform keys for uniform sampling, and
exponential keys E / weight (Efraimidis-Spirakis: the same law as drawing one by one with p ~ weight) for
frequency smoothing.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from xlm_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class MaskingConfig:
  vocab_size: int
  mask_id: int
  special_ids: tuple[int, ...]  # never a random replacement, never masked when sampling by frequency
  word_pred: float = 0.15
  mask_keep_rand: tuple[float, float, float] = (0.8, 0.1, 0.1)
  sample_alpha: float = 0.0

  @functools.cached_property
  def mode_cdf(self) -> np.ndarray:
    """Cumulative mask/keep/random probabilities."""
    cdf = np.cumsum(np.asarray(self.mask_keep_rand, np.float64))
    return cdf / cdf[-1]

  @functools.cached_property
  def replacement_ids(self) -> np.ndarray:
    """The ids a random replacement is drawn from (every id that is not special)."""
    keep = np.ones(self.vocab_size, bool)
    keep[[i for i in self.special_ids if i < self.vocab_size]] = False
    return np.flatnonzero(keep).astype(np.int32)

  def __post_init__(self):
    if abs(sum(self.mask_keep_rand) - 1.0) > 1e-6 or min(self.mask_keep_rand) < 0:
      raise UserError(f"word_mask_keep_rand={self.mask_keep_rand} must be three non-negative numbers summing to 1.")
    if not 0.0 < self.word_pred < 1.0:
      raise UserError(f"word_pred={self.word_pred} must be between 0 and 1.")


def mlm_slots(length: int, word_pred: float) -> int:
  return max(1, math.ceil(word_pred * length))


def mask_draws(rng: np.random.Generator, n: int, length: int, n_slots: int) -> dict[str, np.ndarray]:
  """The random numbers masking `n` rows needs, drawn from a row group's generator (a few calls per group; the
  masking itself then runs once over the rows of all groups: `apply_masking`)."""
  return {"round": rng.random(n), "keys": rng.random((n, length)), "mode": rng.random((n, n_slots)),
          "pick": rng.random((n, n_slots))}


def apply_masking(draws: dict[str, np.ndarray], tokens: np.ndarray, eligible: np.ndarray, cfg: MaskingConfig,
                  n_slots: int, token_scores: np.ndarray | None = None):
  """Mask rows [n, L] with `draws` (`mask_draws` of the same rows). Returns (inputs [n, L], index [n, P],
  targets [n, P], weights [n, P]); chosen positions are ascending in each row, unused slots hold index 0 and
  weight 0."""
  n, length = tokens.shape
  eligible = eligible.copy()
  if token_scores is not None:
    weight = token_scores[tokens]
    eligible &= weight > 0
  candidates = eligible.sum(1)
  count = np.floor(cfg.word_pred * candidates + draws["round"]).astype(np.int64)
  count = np.minimum(np.maximum(count, 1), np.minimum(n_slots, candidates))
  keys = draws["keys"]
  if token_scores is not None:
    keys = -np.log1p(-keys) / np.where(eligible, weight, 1.0)
  keys = np.where(eligible, keys, np.inf)
  chosen = np.argsort(keys, axis=1, kind="stable")[:, :n_slots]
  used = np.arange(n_slots) < count[:, None]
  index = np.sort(np.where(used, chosen, length), axis=1)  # unused slots sort last, as `used` says
  index = np.where(used, index, 0).astype(np.int32)
  targets = np.where(used, tokens[np.arange(n)[:, None], index], 0).astype(np.int32)
  weights = used.astype(np.float32)
  mode = cfg.mode_cdf.searchsorted(draws["mode"], side="right")
  randoms = cfg.replacement_ids[(draws["pick"] * len(cfg.replacement_ids)).astype(np.int64)]
  new = np.where(mode == 0, cfg.mask_id, np.where(mode == 1, targets, randoms))
  inputs = tokens.copy()
  r, s = np.nonzero(used)
  inputs[r, index[r, s]] = new[r, s]
  return inputs, index, targets, weights


def mask_rows(rng: np.random.Generator, tokens: np.ndarray, eligible: np.ndarray, cfg: MaskingConfig,
              n_slots: int, token_scores: np.ndarray | None = None):
  """Mask a group of rows [n, L] with draws from `rng` (see `apply_masking`).

  Contract: the draws from `rng` are part of the batch definition (changing them changes every batch of every
  seed; batch checksums tell)."""
  return apply_masking(mask_draws(rng, *tokens.shape, n_slots), tokens, eligible, cfg, n_slots, token_scores)


def clm_rows(tokens: np.ndarray, segments: np.ndarray):
  """Next-token targets [n, L-1]: position t predicts t+1 when both are real tokens of the same segment."""
  n, length = tokens.shape
  index = np.broadcast_to(np.arange(length - 1, dtype=np.int32), (n, length - 1)).copy()
  targets = tokens[:, 1:].astype(np.int32)
  weights = ((segments[:, 1:] == segments[:, :-1]) & (segments[:, 1:] > 0)).astype(np.float32)
  return tokens.copy(), index, targets, weights


def frequency_scores(counts: np.ndarray, sample_alpha: float, special_ids) -> np.ndarray:
  """max(count, 1)**-sample_alpha per token id, 0 for specials (never masked when sampling by frequency)."""
  scores = np.maximum(counts.astype(np.float64), 1.0) ** (-sample_alpha)
  scores[[i for i in special_ids if i < len(scores)]] = 0.0
  return scores
