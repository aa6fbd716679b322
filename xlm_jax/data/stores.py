"""Flat token stores: the prepared form of a text split, opened with `np.memmap`.

A store of N sentences is two files:

  <stem>.tokens.i32   int32 [T]      the stream `</s> s1 </s> s2 </s> ... sN </s>`: each sentence followed by
                                     `</s>`, one leading `</s>` (XLM's StreamDataset layout)
  <stem>.offsets.i64  int64 [N + 1]  offsets[i] = where sentence i starts; offsets[0] = 1, offsets[N] = T

so sentence i is tokens[offsets[i] : offsets[i + 1] - 1], its framed form `</s> s_i </s>` is
tokens[offsets[i] - 1 : offsets[i + 1]], and the monolingual stream rows of MLM/CLM are plain slices of `tokens`.
Every access is O(1) with no parsing; worker processes map the same pages (the OS page cache shares them), and a
store pickles as its paths (a worker reopens it), never as its data.

`StoreWriter` appends sentences in bounded memory (a buffer of `flush_tokens` tokens) and hashes the bytes as it
writes them; `verify` checks sizes and hashes against what the writer recorded.
Trap: np.memmap cannot map an empty file, so a store always holds at least its leading `</s>`.
"""
from __future__ import annotations

import hashlib
import os
import numpy as np

TOKENS, OFFSETS = ".tokens.i32", ".offsets.i64"


def file_digest(path: str | os.PathLike, chunk: int = 1 << 24) -> str:
  """blake2b (16 bytes) of a file's bytes, read in chunks."""
  h = hashlib.blake2b(digest_size=16)
  with open(path, "rb") as f:
    while block := f.read(chunk):
      h.update(block)
  return h.hexdigest()


class _HashedFile:
  """A binary file written in appended numpy chunks, hashed as written."""

  def __init__(self, path: str, dtype):
    self.path, self.dtype = path, np.dtype(dtype)
    self._f = open(path, "wb")
    self._h = hashlib.blake2b(digest_size=16)
    self.count = 0

  def write(self, values: np.ndarray) -> None:
    data = np.ascontiguousarray(values, self.dtype).tobytes()
    self._f.write(data)
    self._h.update(data)
    self.count += len(values)

  def close(self) -> dict:
    self._f.close()
    return {"file": os.path.basename(self.path), "bytes": self.count * self.dtype.itemsize,
            "blake2b": self._h.hexdigest()}


class StoreWriter:
  """Appends sentences to a new store `<stem>.*` in bounded memory; `close()` returns its manifest entry."""

  def __init__(self, stem: str | os.PathLike, eos_id: int, flush_tokens: int = 1 << 20):
    stem = os.fspath(stem)
    self.eos_id, self.flush_tokens = eos_id, flush_tokens
    self._tokens = _HashedFile(stem + TOKENS, np.int32)
    self._offsets = _HashedFile(stem + OFFSETS, np.int64)
    self._pieces: list[np.ndarray] = []
    self._lengths: list[int] = []
    self._buffered = 0
    self._end = 1  # the leading </s>
    self._tokens.write(np.array([eos_id], np.int32))
    self._offsets.write(np.array([1], np.int64))

  def add(self, ids: np.ndarray) -> None:
    self._pieces.append(np.asarray(ids, np.int32))
    self._lengths.append(len(ids))
    self._buffered += len(ids) + 1
    if self._buffered >= self.flush_tokens:
      self._flush()

  def _flush(self) -> None:
    if not self._pieces:
      return
    lengths = np.asarray(self._lengths, np.int64) + 1
    flat = np.full(int(lengths.sum()), self.eos_id, np.int32)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    for piece, start in zip(self._pieces, starts):  # one slice copy per sentence: C speed, no per-token work
      flat[start:start + len(piece)] = piece
    self._tokens.write(flat)
    self._offsets.write(self._end + ends)
    self._end += int(ends[-1])
    self._pieces, self._lengths, self._buffered = [], [], 0

  def close(self) -> dict:
    self._flush()
    return {"tokens": self._tokens.close(), "offsets": self._offsets.close(), "sentences": self._offsets.count - 1}


class TokenStore:
  """A memory-mapped store (see the module docstring). Picklable: it travels as its path."""

  def __init__(self, stem: str | os.PathLike | None, tokens: np.ndarray | None = None,
               offsets: np.ndarray | None = None):
    self.stem = None if stem is None else os.fspath(stem)
    if self.stem is None:
      self.tokens, self.offsets = tokens, offsets
    else:
      self._open()

  @classmethod
  def from_sentences(cls, sentences, eos_id: int) -> "TokenStore":
    """An in-memory store of the same layout (tests, tiny inputs)."""
    lengths = np.array([len(s) for s in sentences], np.int64)
    offsets = np.concatenate([[1], 1 + np.cumsum(lengths + 1)]).astype(np.int64)
    tokens = np.full(int(offsets[-1]), eos_id, np.int32)
    for s, start in zip(sentences, offsets[:-1]):
      tokens[start:start + len(s)] = s
    return cls(None, tokens, offsets)

  def _open(self) -> None:
    # plain ndarray views of the mappings: np.memmap's Python-level __getitem__ costs more than small reads
    self.tokens = np.asarray(np.memmap(self.stem + TOKENS, np.int32, mode="r"))
    self.offsets = np.asarray(np.memmap(self.stem + OFFSETS, np.int64, mode="r"))

  def __getstate__(self):
    return {"stem": self.stem} if self.stem else {"stem": None, "tokens": self.tokens, "offsets": self.offsets}

  def __setstate__(self, state):
    self.stem = state["stem"]
    if self.stem is None:
      self.tokens, self.offsets = state["tokens"], state["offsets"]
    else:
      self._open()

  def __len__(self) -> int:
    return len(self.offsets) - 1

  @property
  def n_tokens(self) -> int:
    return len(self.tokens)

  def lengths(self, indices: np.ndarray | None = None) -> np.ndarray:
    """int64 token counts (without framing) of `indices` (all sentences when None)."""
    if indices is None:
      return np.diff(self.offsets) - 1
    indices = np.asarray(indices)
    return self.offsets[indices + 1] - self.offsets[indices] - 1

  def sentence(self, i: int) -> np.ndarray:
    return np.asarray(self.tokens[self.offsets[i]:self.offsets[i + 1] - 1])

  def framed_starts(self, indices: np.ndarray) -> np.ndarray:
    """Where `</s> s_i </s>` starts in `tokens` (its length is lengths + 2)."""
    return self.offsets[np.asarray(indices)] - 1

def verify(stem: str | os.PathLike, entry: dict) -> str | None:
  """None when both files of the store `stem` match its manifest `entry` (sizes, then blake2b hashes); else what
  differs, naming the file."""
  for kind, suffix in (("tokens", TOKENS), ("offsets", OFFSETS)):
    path, want = os.fspath(stem) + suffix, entry[kind]
    if not os.path.exists(path):
      return f"{path} is missing"
    size = os.path.getsize(path)
    if size != want["bytes"]:
      return f"{path} has {size} bytes, its manifest says {want['bytes']}"
    if file_digest(path) != want["blake2b"]:
      return f"{path} does not match its manifest checksum"
  return None


def gather(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The concatenation of flat[starts[k] : starts[k] + lengths[k]] for every k.

  Returns (values [sum(lengths)], the piece k of each value, its offset inside the piece). One fancy index into
  `flat` (a memmap reads only those pages): no Python loop."""
  lengths = np.asarray(lengths, np.int64)
  total = int(lengths.sum())
  piece_start = np.cumsum(lengths) - lengths
  piece = np.repeat(np.arange(len(lengths)), lengths)
  offset = np.arange(total, dtype=np.int64) - piece_start[piece]
  return np.asarray(flat[np.asarray(starts, np.int64)[piece] + offset]), piece, offset
