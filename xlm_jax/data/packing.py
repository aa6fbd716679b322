"""TLM examples and packing several examples into one fixed-length row.

A TLM example for the pair (s1 in l1, s2 in l2), in that order, is

  tokens     </s> s1 ... </s> </s> s2 ... </s>
  positions  0    1  ... n1+1 0    1  ... n2+1      positions restart at the second sentence
  langs      l1   l1 ... l1   l2   l2 ... l2        one language id per segment half
  segment    k    k  ... k    k    k  ... k         both halves share one segment id: they attend to each other

Packing puts examples one after another in a row of length L with segment ids 1, 2, ... and pads the rest with
<pad> (segment 0). Attention is restricted to tokens of the same segment, so examples never see each other.
Segments are never derived from positions (`position == 0` also starts the second half of every pair).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from xlm_jax.data.prepare import PreparedText

Example = tuple[np.ndarray, np.ndarray, np.ndarray]  # tokens, positions, langs


def tlm_example(ids1: np.ndarray, ids2: np.ndarray, lang1: int, lang2: int, eos_id: int) -> Example:
  """`[</s> s1 </s>][</s> s2 </s>]` with restarting positions and per-half language ids."""
  n1, n2 = len(ids1) + 2, len(ids2) + 2
  tokens = np.empty(n1 + n2, np.int32)
  tokens[0], tokens[n1 - 1], tokens[n1], tokens[-1] = eos_id, eos_id, eos_id, eos_id
  tokens[1:n1 - 1] = ids1
  tokens[n1 + 1:-1] = ids2
  positions = np.concatenate([np.arange(n1, dtype=np.int32), np.arange(n2, dtype=np.int32)])
  langs = np.concatenate([np.full(n1, lang1, np.int32), np.full(n2, lang2, np.int32)])
  return tokens, positions, langs


def pack(examples: Sequence[Example], length: int, pad_id: int):
  """Place examples one after another in a row of `length`; returns tokens, positions, langs, segment ids."""
  tokens = np.full(length, pad_id, np.int32)
  positions = np.zeros(length, np.int32)
  langs = np.zeros(length, np.int32)
  segments = np.zeros(length, np.int32)
  at = 0
  for k, (t, p, l) in enumerate(examples, 1):
    n = len(t)
    if at + n > length:
      raise ValueError(f"examples need more than {length} tokens")
    tokens[at:at + n], positions[at:at + n], langs[at:at + n], segments[at:at + n] = t, p, l, k
    at += n
  if len(examples):
    langs[at:] = examples[-1][2][-1]
  return tokens, positions, langs, segments


def pack_group(examples: Sequence[Example], n_rows: int, length: int) -> list[list[Example]]:
  """First-fit decreasing: the longest examples first, each into the first of `n_rows` rows with room.

  Examples that fit nowhere are left out. Packing several rows together fills the gaps of one row with the short
  examples drawn for the group: on Multi30k en-fr pairs at length 128, 8 rows and a pool 1.3x what fits give ~96%
  real tokens (one row at a time in draw order: ~92%). The price is a mild length bias (short pairs that arrive
  when every row is full are skipped); benchmarks/multi30k_pretrain.py measures both.
  """
  rows: list[list[Example]] = [[] for _ in range(n_rows)]
  used = [0] * n_rows  # plain ints: a numpy search per example costs more than this loop over a few rows
  order = sorted(range(len(examples)), key=lambda i: -len(examples[i][0]))  # stable: ties keep draw order
  for i in order:
    n = len(examples[i][0])
    for r in range(n_rows):
      if used[r] + n <= length:
        rows[r].append(examples[i])
        used[r] += n
        break
  return rows


class PairStore:
  """Random access to the sentence pairs of one prepared language pair and split (in memory when small).

  Pairs whose TLM example would not fit a row of `max_tokens` (or, with `max_side`, whose longer framed sentence
  exceeds it) are excluded up front (`n_too_long` counts them).
  """

  def __init__(self, data: PreparedText, split: str, max_tokens: int, in_memory: bool = True,
               max_side: int | None = None):
    self._data = data
    self._split = split
    lengths = data.lengths(split).astype(np.int64)  # [N, 2]
    fits = lengths.sum(1) + 4 <= max_tokens
    if max_side is not None:  # NMT: each framed side must fit its own row (source row, target row)
      fits &= lengths.max(1) + 2 <= max_side
    self.index = np.flatnonzero(fits)
    self.n_too_long = int((~fits).sum())
    self.mean_tokens = float((lengths.sum(1) + 4)[fits].mean()) if fits.any() else 0.0
    self._flat = None
    if in_memory:
      pairs = data.read_all(split)
      self._flat = [pairs[i] for i in self.index]

  def __len__(self) -> int:
    return len(self.index)

  def get(self, k: int) -> tuple[np.ndarray, np.ndarray]:
    if self._flat is not None:
      return self._flat[k]
    return self._data.read(self._split, [int(self.index[k])])[0]

  def get_many(self, ks: Sequence[int]) -> list:
    if self._flat is not None:
      return [self._flat[k] for k in ks]
    return self._data.read(self._split, [int(self.index[k]) for k in ks])


@dataclasses.dataclass(frozen=True)
class PairDirection:
  """One TLM step spec: a pair store read in a given order (`en-fr` puts English first)."""

  store: PairStore
  swap: bool
  lang1: int
  lang2: int
  eos_id: int

  def example(self, k: int) -> Example:
    a, b = self.store.get(k)
    if self.swap:
      a, b = b, a
    return tlm_example(a, b, self.lang1, self.lang2, self.eos_id)

  def draw(self, rng: np.random.Generator) -> Example:
    return self.example(int(rng.integers(len(self.store))))

  def mean_tokens(self) -> float:
    """Mean example length (both framed sentences) over the pairs that fit a row."""
    return float(self.store.mean_tokens)
