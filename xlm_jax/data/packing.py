"""TLM examples, and packing several examples into fixed-length rows: the decision (which row, where) per example,
then the placement of every token of a group with a few numpy calls.

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

from typing import Sequence

import numpy as np

from xlm_jax.data.stores import gather

Example = tuple[np.ndarray, np.ndarray, np.ndarray]  # tokens, positions, langs
FIELDS = ("tokens", "positions", "langs", "segment_ids")  # an encoder input, as the pretraining batches name it


def tlm_example(ids1: np.ndarray, ids2: np.ndarray, lang1: int, lang2: int, eos_id: int) -> Example:
  """`[</s> s1 </s>][</s> s2 </s>]` with restarting positions and per-half language ids (one example, for
  evaluation code that builds its own inputs)."""
  n1, n2 = len(ids1) + 2, len(ids2) + 2
  tokens = np.empty(n1 + n2, np.int32)
  tokens[0], tokens[n1 - 1], tokens[n1], tokens[-1] = eos_id, eos_id, eos_id, eos_id
  tokens[1:n1 - 1] = ids1
  tokens[n1 + 1:-1] = ids2
  positions = np.concatenate([np.arange(n1, dtype=np.int32), np.arange(n2, dtype=np.int32)])
  langs = np.concatenate([np.full(n1, lang1, np.int32), np.full(n2, lang2, np.int32)])
  return tokens, positions, langs


def first_fit_decreasing(sizes: np.ndarray, n_rows: int, capacity: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  """Pack examples of `sizes` ([k, d]: d sides, e.g. source and target) into `n_rows` rows of `capacity` per side:
  the largest examples first (ties keep draw order), each into the first row where every side fits.

  Returns (row [k], -1 for an example that fits nowhere; start [k, d] of the example in its row on each side).
  Packing several rows together fills the gaps of one row with the short examples drawn for the group: on Multi30k
  en-fr pairs at length 128, 8 rows and a pool 1.3x what fits give ~96% real tokens. The price is a mild length
  bias (short pairs that arrive when every row is full are skipped); benchmarks/multi30k_pretrain.py measures it.
  Trap: this per-example loop is the only Python work per example; keep it free of numpy calls (a numpy search
  per example costs more than the loop over a few rows)."""
  sizes = np.asarray(sizes, np.int64).reshape(len(sizes), -1)
  k, d = sizes.shape
  row, at_s, at_t = [-1] * k, [0] * k, [0] * k
  order = np.argsort(-sizes.max(1), kind="stable").tolist()
  if d == 1:
    cap, used, need = int(capacity[0]), [0] * n_rows, sizes[:, 0].tolist()
    for i in order:
      n = need[i]
      for r in range(n_rows):
        if used[r] + n <= cap:
          row[i], at_s[i] = r, used[r]
          used[r] += n
          break
  else:  # source and target
    cap_s, cap_t = int(capacity[0]), int(capacity[1])
    used_s, used_t = [0] * n_rows, [0] * n_rows
    need_s, need_t = sizes[:, 0].tolist(), sizes[:, 1].tolist()
    for i in order:
      a, b = need_s[i], need_t[i]
      for r in range(n_rows):
        if used_s[r] + a <= cap_s and used_t[r] + b <= cap_t:
          row[i], at_s[i], at_t[i] = r, used_s[r], used_t[r]
          used_s[r] += a
          used_t[r] += b
          break
  start = np.asarray([at_s, at_t][:d], np.int64).T
  return np.asarray(row, np.int64), start


def first_fit_sequential(sizes: np.ndarray, capacity: Sequence[int], max_rows: int) -> tuple[np.ndarray, np.ndarray]:
  """Examples in order, each appended to the current row, the next that does not fit opening a new row (held-out
  rows: deterministic, every example used once), up to `max_rows` rows. Returns (row [k], -1 past the last row;
  start [k, d])."""
  sizes = np.asarray(sizes, np.int64).reshape(len(sizes), -1)
  ends = np.cumsum(sizes, axis=0)
  row = np.full(len(sizes), -1, np.int64)
  start = np.zeros_like(sizes)
  r, base, i = 0, np.zeros(sizes.shape[1], np.int64), 0
  cap = np.asarray(capacity, np.int64)
  while i < len(sizes) and r < max_rows:
    # every example from i whose end (relative to the row's first) fits: one vectorised search per row
    fits = np.all(ends[i:] - base <= cap, axis=1)
    n = int(np.argmin(fits)) if not fits.all() else len(fits)
    n = max(n, 1)
    row[i:i + n] = r
    start[i:i + n] = ends[i:i + n] - sizes[i:i + n] - base
    base = ends[i + n - 1]
    i += n
    r += 1
  return row, start


def place(out: dict[str, np.ndarray], flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray, rows: np.ndarray,
          cols: np.ndarray, langs: np.ndarray, segments: np.ndarray, names: Sequence[str] = FIELDS) -> None:
  """Write pieces into rows: for piece k and j < lengths[k], `tokens[rows[k], cols[k] + j] = flat[starts[k] + j]`,
  `positions = j`, `langs = langs[k]`, `segments = segments[k]` (the four keys of `out` named by `names`)."""
  values, piece, offset = gather(flat, starts, lengths)
  r, c = rows[piece], cols[piece] + offset
  tokens, positions, lang_ids, segment_ids = names
  out[tokens][r, c] = values
  out[positions][r, c] = offset
  out[lang_ids][r, c] = np.asarray(langs)[piece]
  out[segment_ids][r, c] = np.asarray(segments)[piece]


def empty_rows(n: int, length: int, pad_id: int, pad_lang: int, names: Sequence[str] = FIELDS) -> dict:
  """[n, length] arrays of padding under `names`: tokens <pad>, positions 0, langs `pad_lang`, segment 0."""
  tokens, positions, langs, segments = names
  return {tokens: np.full((n, length), pad_id, np.int32), positions: np.zeros((n, length), np.int32),
          langs: np.full((n, length), pad_lang, np.int32), segments: np.zeros((n, length), np.int32)}


def segment_numbers(rows: np.ndarray, order_key: np.ndarray) -> np.ndarray:
  """1, 2, ... per row for the placed examples (rows >= 0), in the order of `order_key` within each row."""
  k = len(rows)
  seg = np.zeros(k, np.int64)
  placed = np.flatnonzero(rows >= 0)
  if placed.size:
    order = placed[np.lexsort((order_key[placed], rows[placed]))]
    r = rows[order]
    first = np.searchsorted(r, r, side="left")
    seg[order] = np.arange(len(order)) - first + 1
  return seg
