"""Row builders: the sources of a batch's rows, built vectorised over a whole group of rows from token stores.

Every builder has
  size                       sentences or pairs (for language sampling)
  rows(rng, n) -> fields     n random rows: a dict of numpy arrays with a leading [n] axis
  eval_rows(max_rows)        a fixed sequence of rows (held-out evaluation), same fields
and is picklable (stores travel as paths), so worker processes can build rows. A builder may also split `rows`
into `plan(rng, n)` (a group's random draws and packing decisions, from the group's generator) and
`build(plans, n)` (the rows of several groups at once), which the mixture then uses; `length` is its row length.

  StreamRows        MLM/CLM: a monolingual stream cut into rows of bptt tokens (XLM's StreamDataset)
  TlmRows           TLM: pairs of one direction packed first-fit decreasing, `[</s> s1 </s>][</s> s2 </s>]`
  TranslationRows   MT (a pair direction) or denoising (a sentence, noised -> clean): source and target rows,
                    pairs packed on both sides at once; next-token targets on the target side
  BtRows            back-translation: one framed sentence per row, right-padded; the step translates it
  ClassifyRows      classification: labelled examples `</s> a </s> b </s>` (pairs) or `</s> a </s>` packed
                    first-fit decreasing, one language id on every token; the label at each example's first token

The only per-example Python work is the packing decision (`packing.first_fit_decreasing`); reading, placing,
framing and noising are numpy over the group. A later task (classification) adds a builder with the same three
members and its own batch key ('cls') to the `mixture.Mixture`.
"""
from __future__ import annotations

import math

import numpy as np

from xlm_jax.data.masking import clm_rows
from xlm_jax.data.noise import NoiseConfig, add_noise
from xlm_jax.data.packing import (empty_rows, first_fit_decreasing, first_fit_sequential, place,
                                  segment_numbers)
from xlm_jax.data.stores import TokenStore, gather
from xlm_jax.errors import UserError

SRC = ("src_tokens", "src_positions", "src_langs", "src_segments")
TGT = ("tgt_tokens", "tgt_positions", "tgt_langs", "tgt_segments")


class StreamRows:
  """Rows of a monolingual stream: row c is tokens[c*bptt : (c+1)*bptt], one segment, positions 0..bptt-1."""

  def __init__(self, store: TokenStore, bptt: int, lang_id: int):
    self.store, self.bptt, self.lang_id = store, bptt, lang_id
    self.size = len(store)
    self.n_rows = store.n_tokens // bptt
    if self.n_rows == 0:
      raise UserError(f"a monolingual stream of {store.n_tokens} tokens is shorter than one row of "
                      f"config.data.bptt={bptt} tokens; give it more text or lower bptt.")

  def _rows(self, chunks: np.ndarray) -> dict[str, np.ndarray]:
    n = len(chunks)
    at = chunks[:, None].astype(np.int64) * self.bptt + np.arange(self.bptt)
    return {"tokens": np.asarray(self.store.tokens[at]),
            "positions": np.broadcast_to(np.arange(self.bptt, dtype=np.int32), (n, self.bptt)).copy(),
            "langs": np.full((n, self.bptt), self.lang_id, np.int32),
            "segment_ids": np.ones((n, self.bptt), np.int32)}

  @property
  def length(self) -> int:
    return self.bptt

  def plan(self, rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(self.n_rows, size=n)

  def build(self, plans: list, n: int) -> dict[str, np.ndarray]:
    return self._rows(np.concatenate(plans))

  def rows(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return self.build([self.plan(rng, n)], n)

  def eval_rows(self, max_rows: int) -> dict[str, np.ndarray]:
    return self._rows(np.arange(min(self.n_rows, max_rows)))


class PairIndex:
  """The pairs of one prepared pair dataset and split whose framed sides fit: `max_tokens` for both framed sides
  together and, with `max_side`, each framed side alone (NMT: a source row and a target row).
  `n_too_long` counts the others."""

  def __init__(self, first: TokenStore, second: TokenStore, max_tokens: int, max_side: int | None = None):
    self.stores = (first, second)
    l1, l2 = first.lengths(), second.lengths()
    fits = l1 + l2 + 4 <= max_tokens
    if max_side is not None:
      fits &= np.maximum(l1, l2) + 2 <= max_side
    self.index = np.flatnonzero(fits)
    self.n_too_long = int((~fits).sum())
    self.mean_tokens = float((l1 + l2 + 4)[fits].mean()) if fits.any() else 0.0

  def __len__(self) -> int:
    return len(self.index)


def _pool(n_rows: int, length: int, mean_tokens: float, pool: float) -> int:
  """Examples drawn for a group: ~`pool` times what fits `n_rows` rows of `length`."""
  return int(math.ceil(n_rows * length / max(mean_tokens, 1.0) * pool))


def _framed(store: TokenStore, picks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(starts, lengths) of `</s> s </s>` of sentences `picks` in store.tokens."""
  return store.framed_starts(picks), store.lengths(picks) + 2


class TlmRows:
  """TLM rows of one direction of a language pair (`swap`: the pair's second language comes first)."""

  def __init__(self, pairs: PairIndex, swap: bool, lang1: int, lang2: int, length: int, pad_id: int,
               pool: float = 1.3):
    if len(pairs) == 0:
      raise UserError(f"no sentence pair fits a row of {length} tokens; raise config.data.bptt.")
    self.pairs, self.swap, self.lang1, self.lang2 = pairs, swap, lang1, lang2
    self.length, self.pad_id, self.pool = length, pad_id, pool
    self.size = len(pairs)

  def _build(self, picks: np.ndarray, row: np.ndarray, start: np.ndarray, n: int) -> dict[str, np.ndarray]:
    first, second = self.pairs.stores[::-1] if self.swap else self.pairs.stores
    out = empty_rows(n, self.length, self.pad_id, self.lang2)
    s1, n1 = _framed(first, picks)
    s2, n2 = _framed(second, picks)
    keep = row >= 0
    seg = segment_numbers(row, start[:, 0])[keep]
    r, c = row[keep], start[keep, 0]
    place(out, first.tokens, s1[keep], n1[keep], r, c, np.full(len(r), self.lang1), seg)
    place(out, second.tokens, s2[keep], n2[keep], r, c + n1[keep], np.full(len(r), self.lang2), seg)
    return out

  def plan(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(picked pairs, their row, their start): the draws and the packing decision of one group."""
    k = _pool(n, self.length, self.pairs.mean_tokens, self.pool)
    picks = self.pairs.index[rng.integers(self.size, size=k)]
    sizes = self.pairs.stores[0].lengths(picks) + self.pairs.stores[1].lengths(picks) + 4
    row, start = first_fit_decreasing(sizes, n, [self.length])
    keep = row >= 0
    return picks[keep], row[keep], start[keep]

  def build(self, plans: list, n: int) -> dict[str, np.ndarray]:
    picks = np.concatenate([p[0] for p in plans])
    row = np.concatenate([p[1] + i * n for i, p in enumerate(plans)])  # group i owns rows i*n .. i*n+n-1
    start = np.concatenate([p[2] for p in plans])
    return self._build(picks, row, start, n * len(plans))

  def rows(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return self.build([self.plan(rng, n)], n)

  def eval_rows(self, max_rows: int) -> dict[str, np.ndarray]:
    """Pairs in file order, packed first-fit sequentially (the next pair that does not fit opens a new row)."""
    picks = self.pairs.index[:max_rows * self.length // 6 + 1]
    sizes = self.pairs.stores[0].lengths(picks) + self.pairs.stores[1].lengths(picks) + 4
    row, start = first_fit_sequential(sizes, [self.length], max_rows)
    return self._build(picks, row, start, int(row.max()) + 1)


class TranslationRows:
  """MT rows of a pair direction, or denoising rows of one language (`noise`: the source is a noised copy of
  the target sentence). Several examples per row, packed on both sides; example k of a row has segment k on both
  sides (a target token attends causally to its own sentence and cross-attends to its own source only)."""

  def __init__(self, *, src_len: int, tgt_len: int, pad_id: int, src_lang: int, tgt_lang: int,
               pairs: PairIndex | None = None, swap: bool = False, sentences: TokenStore | None = None,
               noise: NoiseConfig | None = None, pool: float = 1.3):
    self.src_len, self.tgt_len, self.pad_id, self.pool = src_len, tgt_len, pad_id, pool
    self.src_lang, self.tgt_lang = src_lang, tgt_lang
    self.pairs, self.swap, self.noise = pairs, swap, noise
    if pairs is not None:
      self.index, self.mean_tokens = pairs.index, pairs.mean_tokens / 2
      self.src_store, self.tgt_store = pairs.stores[::-1] if swap else pairs.stores
    else:
      self.src_store = self.tgt_store = sentences
      lengths = sentences.lengths()
      ok = lengths + 2 <= min(src_len, tgt_len)
      self.index = np.flatnonzero(ok)
      self.mean_tokens = float((lengths[ok] + 2).mean()) if ok.any() else 0.0
    self.size = len(self.index)
    if self.size == 0:
      raise UserError(f"no training sentence fits {min(src_len, tgt_len)} tokens (config.nmt.src_len / tgt_len).")

  def _sources(self, rng: np.random.Generator | None, picks: np.ndarray):
    """(flat, starts, lengths) of the framed source sentences of `picks`: straight from the store for MT, the
    noised copies (built in one buffer) for denoising."""
    starts, lengths = _framed(self.src_store, picks)
    if self.noise is None:
      return self.src_store.tokens, starts, lengths
    words_len = lengths - 2
    width = int(words_len.max()) if len(words_len) else 0
    words = np.zeros((len(picks), width), np.int32)
    values, piece, offset = gather(self.src_store.tokens, starts + 1, words_len)
    words[piece, offset] = values
    words, words_len = add_noise(rng, words, words_len, self.noise)
    eos = self.src_store.tokens[0]
    framed = np.full((len(picks), width + 2), eos, np.int32)
    inside = np.arange(width) < words_len[:, None]
    framed[:, 1:-1] = np.where(inside, words, eos)
    # </s> after the last kept word: the slot right after it already holds </s> (dropped words were overwritten)
    return framed.ravel(), np.arange(len(picks)) * (width + 2), words_len + 2

  def _build(self, flat, starts, src_n, picks, row, start, n) -> dict[str, np.ndarray]:
    tgt_starts, tgt_n = _framed(self.tgt_store, picks)
    out = {**empty_rows(n, self.src_len, self.pad_id, self.src_lang, SRC),
           **empty_rows(n, self.tgt_len, self.pad_id, self.tgt_lang, TGT)}
    keep = row >= 0
    seg = segment_numbers(row, start[:, 0])[keep]
    r = row[keep]
    place(out, flat, starts[keep], src_n[keep], r, start[keep, 0], np.full(len(r), self.src_lang), seg, SRC)
    place(out, self.tgt_store.tokens, tgt_starts[keep], tgt_n[keep], r, start[keep, 1],
          np.full(len(r), self.tgt_lang), seg, TGT)
    _, index, targets, weights = clm_rows(out["tgt_tokens"], out["tgt_segments"])
    out.update(pred_index=index, pred_targets=targets, pred_weights=weights)
    return out

  def rows(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    k = _pool(n, max(self.src_len, self.tgt_len), self.mean_tokens, self.pool)
    picks = self.index[rng.integers(self.size, size=k)]
    flat, starts, src_n = self._sources(rng, picks)
    tgt_n = self.tgt_store.lengths(picks) + 2
    row, start = first_fit_decreasing(np.stack([src_n, tgt_n], 1), n, [self.src_len, self.tgt_len])
    return self._build(flat, starts, src_n, picks, row, start, n)

  def eval_rows(self, max_rows: int) -> dict[str, np.ndarray]:
    """Examples in file order, packed first-fit sequentially (no noise: held-out MT)."""
    picks = self.index[:max_rows * max(self.src_len, self.tgt_len) // 3 + 1]
    flat, starts, src_n = self._sources(np.random.default_rng(0), picks)
    tgt_n = self.tgt_store.lengths(picks) + 2
    row, start = first_fit_sequential(np.stack([src_n, tgt_n], 1), [self.src_len, self.tgt_len], max_rows)
    return self._build(flat, starts, src_n, picks, row, start, int(row.max()) + 1)


class BtRows:
  """Back-translation sources: one framed sentence of language `lang1` per row, right-padded to `length`; only
  sentences whose framed form fits `max_tokens` (default `length`)."""

  def __init__(self, sentences: TokenStore, length: int, pad_id: int, lang1: int, lang2: int,
               max_tokens: int | None = None):
    self.store, self.length, self.pad_id, self.lang1, self.lang2 = sentences, length, pad_id, lang1, lang2
    self.index = np.flatnonzero(sentences.lengths() + 2 <= min(length, max_tokens or length))
    self.size = len(self.index)
    if self.size == 0:
      raise UserError(f"no training sentence fits {min(length, max_tokens or length)} tokens (config.nmt.bt_len "
                      "/ tgt_len).")

  def rows(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    picks = self.index[rng.integers(self.size, size=n)]
    starts, lengths = _framed(self.store, picks)
    tokens = np.full((n, self.length), self.pad_id, np.int32)
    values, piece, offset = gather(self.store.tokens, starts, lengths)
    tokens[piece, offset] = values
    return {"tokens": tokens, "langs1": np.full(n, self.lang1, np.int32),
            "langs2": np.full(n, self.lang2, np.int32)}

  def eval_rows(self, max_rows: int) -> dict[str, np.ndarray]:
    raise UserError("back-translation steps have no held-out rows; evaluate MT directions instead.")



class ClassifyRows:
  """Labelled examples of one language packed into rows of `length` tokens.

  `examples` holds example i as one sentence `a </s> b` (pairs; `a` alone for single sentences), so its framed form
  is the reference's `</s> a </s> b </s>` (XLM's concat_batches with reset_positions=False: one shared `</s>`,
  positions continuous over the example). Every token of an example carries `lang_id` (the reference gives both
  halves the same language id). Example k of a row has segment k; `pred_index` [n, slots] is the first token of
  each example of the row (where the head reads), `pred_targets` its label id, `pred_weights` 1 (0 on empty slots).
  Every example must fit a row (the task truncates them beforehand). `slots` = length // 3, the most examples a row
  can hold (the shortest example, `</s> x </s>`, has 3 tokens), so shapes never depend on the data."""

  def __init__(self, examples: TokenStore, labels: np.ndarray, lang_id: int, length: int, pad_id: int,
               pool: float = 1.3):
    lengths = examples.lengths() + 2
    if len(examples) == 0:
      raise UserError("a classification set has no examples.")
    if lengths.max() > length:
      raise UserError(f"a classification example has {int(lengths.max())} tokens framed, more than a row of "
                      f"{length}; truncate the examples to the row length first.")
    self.store, self.labels = examples, np.asarray(labels, np.int32)
    self.lang_id, self.length, self.pad_id, self.pool = lang_id, length, pad_id, pool
    self.size = len(examples)
    self.slots = length // 3
    self.mean_tokens = float(lengths.mean())

  def _build(self, picks: np.ndarray, row: np.ndarray, start: np.ndarray, n: int) -> dict[str, np.ndarray]:
    out = empty_rows(n, self.length, self.pad_id, self.lang_id)
    keep = row >= 0
    picks, row, col = picks[keep], row[keep], start[keep, 0]
    seg = segment_numbers(row, col)
    starts, lengths = _framed(self.store, picks)
    place(out, self.store.tokens, starts, lengths, row, col, np.full(len(row), self.lang_id), seg)
    index = np.zeros((n, self.slots), np.int32)
    targets = np.zeros((n, self.slots), np.int32)
    weights = np.zeros((n, self.slots), np.float32)
    slot = seg - 1
    index[row, slot] = col
    targets[row, slot] = self.labels[picks]
    weights[row, slot] = 1.0
    out.update(pred_index=index, pred_targets=targets, pred_weights=weights)
    return out

  def plan(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(picked examples, their row, their start): the draws and the packing decision of one group."""
    k = _pool(n, self.length, self.mean_tokens, self.pool)
    picks = rng.integers(self.size, size=k)
    row, start = first_fit_decreasing(self.store.lengths(picks) + 2, n, [self.length])
    keep = row >= 0
    return picks[keep], row[keep], start[keep]

  def build(self, plans: list, n: int) -> dict[str, np.ndarray]:
    picks = np.concatenate([p[0] for p in plans])
    row = np.concatenate([p[1] + i * n for i, p in enumerate(plans)])
    start = np.concatenate([p[2] for p in plans])
    return self._build(picks, row, start, n * len(plans))

  def rows(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return self.build([self.plan(rng, n)], n)

  def eval_rows(self, max_rows: int) -> dict[str, np.ndarray]:
    """Every example in order (up to `max_rows` rows), packed first-fit sequentially."""
    picks = np.arange(self.size)
    row, start = first_fit_sequential(self.store.lengths(picks) + 2, [self.length], max_rows)
    return self._build(picks, row, start, int(row.max()) + 1)
