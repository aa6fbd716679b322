"""Monolingual token streams cut into fixed-length rows, as XLM's `StreamDataset` does for MLM and CLM.

A language's stream is `</s> s1 </s> s2 </s> ...`: every sentence followed by `</s>`, one leading `</s>`.
Row c is stream[c*bptt : (c+1)*bptt]; rows cross sentence boundaries, there is no padding, positions run
0..bptt-1 and every token of a row is one segment (the reference treats the chunk as one sequence).
"""
from __future__ import annotations

import numpy as np

from xlm_jax.data.prepare import PreparedText

IN_MEMORY_MAX_TOKENS = 50_000_000


class TokenStream:
  """Random access to the rows of one language's stream for one split."""

  def __init__(self, data: PreparedText, split: str, bptt: int, eos_id: int,
               in_memory_max_tokens: int = IN_MEMORY_MAX_TOKENS):
    self.bptt = bptt
    self.eos_id = eos_id
    self._data = data
    self._split = split
    lengths = data.lengths(split).astype(np.int64)
    # sentence i occupies stream[starts[i] : starts[i] + lengths[i]], followed by </s>
    self._starts = 1 + np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])
    self._lengths = lengths
    self.n_tokens = int(1 + (lengths + 1).sum())
    self.n_rows = self.n_tokens // bptt
    self._flat = None
    if self.n_tokens <= in_memory_max_tokens:
      self._flat = self._build(0, len(lengths), 0, self.n_tokens)

  def _build(self, first: int, last: int, start: int, stop: int) -> np.ndarray:
    """stream[start:stop], reading sentences first..last-1 (which must cover it)."""
    out = np.full(stop - start, self.eos_id, np.int32)
    for i, ids in zip(range(first, last), self._data.read(self._split, range(first, last))):
      a, b = int(self._starts[i]) - start, int(self._starts[i]) + len(ids) - start
      lo, hi = max(a, 0), min(b, stop - start)
      if lo < hi:
        out[lo:hi] = ids[lo - a:hi - a]
    return out

  def row(self, c: int) -> np.ndarray:
    start, stop = c * self.bptt, (c + 1) * self.bptt
    if self._flat is not None:
      return self._flat[start:stop]
    first = max(int(np.searchsorted(self._starts, start, side="right")) - 1, 0)
    last = int(np.searchsorted(self._starts, stop, side="left"))
    return self._build(first, max(last, first + 1), start, stop)
