"""Tokenise raw text once into flat token stores (`stores.py`), with a manifest; reuse them afterwards.

One prepared dataset per language (monolingual sentences, one store per split) or per language pair (aligned
sentence pairs, two stores per split: side 0 and side 1, sentence i of one translating sentence i of the other).
A dataset lives in `cache_dir/<name>-<key>/`, where the key hashes the input fingerprint (files: path, size,
mtime; TFDS: name, version), the tokenizer fingerprint and the preparation settings: it is rebuilt exactly when
one of them changes.

Preparation streams in bounded memory: lines are encoded in chunks (`CHUNK_LINES`; in `workers` spawned processes
when > 1) and appended to the stores, which flush every ~1M tokens; nothing holds a split or a per-sentence list.
The input files are re-checked (size, mtime) after reading: a file that changed meanwhile is an error naming it.

`manifest.json` records, per split: lines read, sentences kept, tokens, <unk> count, and lines dropped with the
reason (`empty`, `too_long`), so nothing is filtered silently (`lines == sentences + sum(dropped)`), plus each
store's file sizes and blake2b checksums. Opening a prepared dataset checks sizes and checksums: a store that does
not match is prepared again with a one-line notice. Monolingual data has no length limit (streams cut rows across
sentences, as the reference's StreamDataset); pairs longer than `max_len` tokens on either side are dropped, as
the reference does for TLM and MT. Per-split token counts (`counts.<split>.npy`, for frequency-smoothed masking)
are computed while writing.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import multiprocessing
import os
import pickle
import shutil
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from etils import epath

from xlm_jax.data.stores import StoreWriter, TokenStore, verify
from xlm_jax.errors import UserError
from xlm_jax.io_utils import atomic_write

PREPARE_VERSION = "2"
CHUNK_LINES = 4096
Texts = Callable[[], Iterator[str]]


@dataclasses.dataclass
class PreparedText:
  """A prepared dataset: its stores by split, per-sentence lengths and the manifest."""

  path: str
  n_fields: int
  manifest: dict
  _stores: dict = dataclasses.field(default_factory=dict, repr=False)

  def splits(self) -> list[str]:
    return sorted(self.manifest["splits"])

  def store(self, split: str, side: int = 0) -> TokenStore:
    """The memory-mapped store of `split` (pairs: side 0 or 1)."""
    if (split, side) not in self._stores:
      self._stores[(split, side)] = TokenStore(os.path.join(self.path, f"{split}.{side}"))
    return self._stores[(split, side)]

  def lengths(self, split: str) -> np.ndarray:
    """[N] (monolingual) or [N, 2] (pairs) token counts, without framing."""
    if self.n_fields == 1:
      return self.store(split).lengths()
    return np.stack([self.store(split, k).lengths() for k in range(2)], axis=1)

  def read(self, split: str, indices: Sequence[int]) -> list:
    """Token-id arrays (int32; pairs of arrays when n_fields == 2) for `indices`, in that order."""
    sides = [[s.sentence(int(i)) for i in indices] for s in (self.store(split, k) for k in range(self.n_fields))]
    return sides[0] if self.n_fields == 1 else list(zip(*sides))

  def read_all(self, split: str) -> list:
    return self.read(split, range(len(self.store(split))))

  def token_counts(self, split: str, vocab_size: int) -> np.ndarray:
    """[vocab_size] int64: occurrences of each token id in `split` (both sides of pairs), counted at preparation."""
    counts = np.load(os.path.join(self.path, f"counts.{split}.npy"))
    if len(counts) > vocab_size:
      raise UserError(f"{self.path}: token ids up to {len(counts) - 1} do not fit a vocabulary of {vocab_size}; the "
                      "dataset was prepared with another tokenizer (delete it to prepare it again).")
    return np.pad(counts, (0, vocab_size - len(counts)))

  def damage(self) -> str | None:
    """None when every store matches its manifest entry; else what differs, naming the file."""
    for split, entries in sorted(self.manifest.get("stores", {}).items()):
      for side, entry in enumerate(entries):
        found = verify(os.path.join(self.path, f"{split}.{side}"), entry)
        if found:
          return found
    return None


def _key(parts: Mapping) -> str:
  return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _stat(path: str) -> tuple[int, int]:
  st = os.stat(path)
  return st.st_size, st.st_mtime_ns


_ENCODERS: list = []  # this process's encoders: set directly, or by `_set_encoders` in a pool worker


def _set_encoders(encoders: list) -> None:
  global _ENCODERS
  _ENCODERS = encoders


def _encode_chunk(chunk: list) -> list:
  """Per item: None (a side is blank) or a tuple of int32 id arrays, one per field."""
  out = []
  for item in chunk:
    texts = (item,) if len(_ENCODERS) == 1 else item
    if any(not t.strip() for t in texts):
      out.append(None)
    else:
      out.append(tuple(np.asarray(enc(t), np.int32) for enc, t in zip(_ENCODERS, texts)))
  return out


def _encoded(items: Iterable, encoders: list, workers: int) -> Iterator:
  """Encoded items in input order, `CHUNK_LINES` at a time; with workers > 1, `workers` chunks at once in spawned
  processes (bounded: never more than 2 * workers chunks in flight). The encoders reach the workers pickled, once
  per worker (`tokenizer.LanguageEncoder` pickles as its tokenizer's state). Trap: spawned, not forked: a forked
  child of a process that runs JAX's threads can deadlock (JAX warns so), and the chunks are encoded with no JAX
  in the workers at all."""
  chunks = iter(lambda it=iter(items): list(itertools.islice(it, CHUNK_LINES)), [])
  if workers <= 1:
    _set_encoders(encoders)
    for chunk in chunks:
      yield from _encode_chunk(chunk)
    return
  try:
    pickle.dumps(encoders)
  except Exception as e:  # lambdas, local functions, open handles: all fail differently
    raise UserError(f"data preparation with workers={workers} sends its encode functions to other processes, and "
                    f"they cannot be pickled ({type(e).__name__}: {e}); pass tokenizer.LanguageEncoder(tokenizer, "
                    "lang) (or any picklable callable), or set config.data.prepare_workers=1.") from None
  with multiprocessing.get_context("spawn").Pool(workers, initializer=_set_encoders, initargs=(encoders,)) as pool:
    while True:
      batch = list(itertools.islice(chunks, 2 * workers))
      if not batch:
        return
      for encoded in pool.map(_encode_chunk, batch):
        yield from encoded


def prepare(name: str, cache_dir: str, split_texts: Mapping[str, Callable[[], Iterable]], *, n_fields: int,
            encode: Callable[[str], list[int]] | Sequence[Callable[[str], list[int]]], unk_id: int, eos_id: int,
            fingerprint: Mapping, max_len: int = 0, describe: str = "", validate: Callable[[], None] | None = None,
            input_files: Sequence[str] = (), workers: int = 1, notice: Callable[[str], None] = print
            ) -> PreparedText:
  """Tokenise `split_texts` (split -> callable giving sentences, or pairs when n_fields == 2) unless prepared.

  Lines that are empty (blank after stripping, or no token after encoding) and, when `max_len > 0`, lines longer
  than `max_len` tokens are dropped and counted in the manifest (`dropped.empty`, `dropped.too_long`; a line is
  counted once, as empty if it is both); for pairs, a pair is dropped when either side is. `encode` may be one
  function or one per field (each side of a pair has its own language). `validate` runs first, only when
  building. `input_files` are the local files the texts come from: one that changes while it is read is refused.
  A prepared dataset whose stores do not match the manifest is prepared again after a one-line `notice`.
  """
  encoders = list(encode) if isinstance(encode, (list, tuple)) else [encode] * n_fields
  key = _key({"fingerprint": dict(fingerprint), "max_len": max_len, "n_fields": n_fields, "eos": eos_id,
              "version": PREPARE_VERSION, "splits": sorted(split_texts)})
  path = epath.Path(cache_dir) / f"{name}-{key}"
  manifest_path = path / "manifest.json"
  if manifest_path.exists():
    found = PreparedText(os.fspath(path), n_fields, json.loads(manifest_path.read_text()))
    problem = found.damage()
    if problem is None:
      return found
    notice(f"notice: prepared data {describe or name}: {problem}; preparing it again.")

  if validate is not None:
    validate()
  before = {p: _stat(p) for p in input_files}
  tmp = epath.Path(os.fspath(path) + ".incomplete")
  if tmp.exists():
    shutil.rmtree(tmp)
  tmp.mkdir(parents=True)
  stats: dict[str, dict] = {}
  stores: dict[str, list] = {}
  try:
    for split, make in split_texts.items():
      s = stats[split] = {"lines": 0, "sentences": 0, "tokens": 0, "unk": 0, "dropped": {"empty": 0, "too_long": 0}}
      writers = [StoreWriter(tmp / f"{split}.{k}", eos_id) for k in range(n_fields)]
      counts = np.zeros(0, np.int64)
      pending: list[np.ndarray] = []
      for ids in _encoded(make(), encoders, workers):
        s["lines"] += 1
        if ids is None or any(len(x) == 0 for x in ids):  # blank, or only characters the normaliser removes
          s["dropped"]["empty"] += 1
          continue
        if max_len > 0 and any(len(x) > max_len for x in ids):
          s["dropped"]["too_long"] += 1
          continue
        s["sentences"] += 1
        for writer, x in zip(writers, ids):
          writer.add(x)
          pending.append(x)
        if len(pending) >= CHUNK_LINES:
          counts = _add_counts(counts, pending)
          pending = []
      counts = _add_counts(counts, pending)
      stores[split] = [w.close() for w in writers]
      s["tokens"] = int(counts.sum())
      s["unk"] = int(counts[unk_id]) if unk_id < len(counts) else 0
      if s["sentences"] == 0:
        raise UserError(f"{describe or name}: split {split!r} has no usable sentence ({s['lines']} lines read, "
                        f"dropped: {s['dropped']}); give it text.")
      np.save(os.fspath(tmp / f"counts.{split}.npy"), counts)
    for p, was in before.items():
      if _stat(p) != was:
        raise UserError(f"{p} changed while {describe or name} was being prepared from it (size or modification "
                        "time differ); prepare again once the file is complete.")
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  manifest = {"name": name, "describe": describe, "n_fields": n_fields, "max_len": max_len, "eos_id": eos_id,
              "fingerprint": dict(fingerprint), "version": PREPARE_VERSION, "splits": stats, "stores": stores}
  with atomic_write(tmp / "manifest.json") as f:
    json.dump(manifest, f, indent=1, sort_keys=True)
  if path.exists():
    shutil.rmtree(path)
  os.replace(tmp, path)
  return PreparedText(os.fspath(path), n_fields, manifest)


def _add_counts(counts: np.ndarray, pieces: list[np.ndarray]) -> np.ndarray:
  if not pieces:
    return counts
  found = np.bincount(np.concatenate(pieces), minlength=len(counts))
  found[:len(counts)] += counts
  return found

