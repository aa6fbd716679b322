"""Tokenise raw text once into ArrayRecord TFDS datasets of token ids, with a manifest; reuse it afterwards.

One dataset per language (monolingual sentences) or per language pair (aligned sentence pairs), holding the
splits the source has. A dataset lives in `cache_dir/<name>-<key>/`, where the key hashes the input files (path,
size, mtime), the tokenizer fingerprint and the preparation settings: it is rebuilt exactly when one of them
changes. Preparation streams (one sentence in memory at a time, plus a 4-byte length per sentence).

`manifest.json` beside it records, per split: lines read, sentences kept, tokens, <unk> count, and lines dropped
with the reason (`empty`, `too_long`), so nothing is filtered silently (`lines == sentences + sum(dropped)`).
Monolingual data has no length limit (streams cut rows across sentences, as the reference's StreamDataset);
pairs longer than `max_len` tokens on either side are dropped, as the reference does for TLM and MT.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from xlm_jax.errors import UserError
from xlm_jax.io_utils import atomic_write

PREPARE_VERSION = "1"
Texts = Callable[[], Iterator[str]]


def _tfds():
  import tensorflow_datasets as tfds  # imported lazily: slow to import, and not needed to use a bundle
  tfds.disable_progress_bar()
  logging.getLogger("absl").setLevel(logging.WARNING)
  return tfds


def _builder_class():
  """The one TFDS builder: sentences (or sentence pairs) of token ids, generated from a Python iterator."""
  tfds = _tfds()
  if "_CLASS" in _builder_class.__dict__:
    return _builder_class._CLASS

  class TokenizedText(tfds.core.GeneratorBasedBuilder):
    """Token ids of sentences (`ids`) or aligned pairs (`ids1`, `ids2`), in input order."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, n_fields: int = 1, split_examples=None, **kwargs):
      self._n_fields = n_fields
      self._split_examples = split_examples or {}
      super().__init__(**kwargs)

    def _info(self):
      tensor = lambda: tfds.features.Tensor(shape=(None,), dtype=np.int32)
      names = ["ids"] if self._n_fields == 1 else ["ids1", "ids2"]
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({n: tensor() for n in names}),
                                   disable_shuffling=True)

    def _split_generators(self, dl_manager):
      return {split: self._generate_examples(make) for split, make in self._split_examples.items()}

    def _generate_examples(self, make):
      names = ["ids"] if self._n_fields == 1 else ["ids1", "ids2"]
      for i, example in enumerate(make()):
        yield i, dict(zip(names, example))

  _builder_class._CLASS = TokenizedText
  return TokenizedText


BULK_READ = 64  # reads of at least this many records go through ArrayRecord's (thread-pooled) bulk read


def _example_decoder(n_fields: int) -> Callable[[bytes], object] | None:
  """Token ids straight from a record's serialized tf.train.Example (what TFDS's ArrayRecord files hold), or None
  when TFDS's proto module is not where it is expected."""
  try:
    from tensorflow_datasets.proto import tf_example_pb2
  except ImportError:
    return None
  parse = tf_example_pb2.Example.FromString

  def ids(features, name: str) -> np.ndarray:
    return np.fromiter(features[name].int64_list.value, np.int32)

  if n_fields == 1:
    return lambda raw: ids(parse(raw).features.feature, "ids")

  def pair(raw: bytes):
    features = parse(raw).features.feature
    return ids(features, "ids1"), ids(features, "ids2")

  return pair


@dataclasses.dataclass
class PreparedText:
  """A prepared dataset: random access to token ids by split, plus per-sentence lengths and the manifest.

  Reads decode the raw records themselves (about 3x faster than TFDS's generic decoding, and no thread pool per
  call, which costs ~0.5 ms); the fast path is checked against TFDS's decoding on a split's first record and
  TFDS's is used when they differ. Safe to read from several threads."""

  path: str
  n_fields: int
  manifest: dict
  _sources: dict = dataclasses.field(default_factory=dict)
  _readers: dict = dataclasses.field(default_factory=dict)

  def splits(self) -> list[str]:
    return sorted(self.manifest["splits"])

  def lengths(self, split: str) -> np.ndarray:
    """[N] (monolingual) or [N, 2] (pairs) token counts, without framing."""
    return np.load(os.path.join(self.path, f"lengths.{split}.npy"))

  def source(self, split: str):
    """TFDS's random-access data source of `split` (records decoded to {'ids'} or {'ids1', 'ids2'})."""
    if split not in self._sources:
      builder = _builder_class()(n_fields=self.n_fields, data_dir=self.path, file_format="array_record")
      self._sources[split] = builder.as_data_source(split=split)
    return self._sources[split]

  def _fields(self, example: Mapping):
    return example["ids"] if self.n_fields == 1 else (example["ids1"], example["ids2"])

  def _reader(self, split: str):
    """(raw ArrayRecord source, decoder) of `split`, or None to decode through TFDS."""
    if split not in self._readers:
      source = self.source(split)
      raw, decode = getattr(source, "data_source", None), _example_decoder(self.n_fields)
      fast = None
      if raw is not None and decode is not None and len(source):
        try:
          mine, theirs = decode(raw[0]), self._fields(source[0])
          if self.n_fields == 1:
            mine, theirs = (mine,), (theirs,)
          same = all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(mine, theirs))
          fast = (raw, decode) if same else None
        except Exception:  # any surprise in TFDS's internals: keep its own decoding
          fast = None
      self._readers[split] = fast
    return self._readers[split]

  def read(self, split: str, indices: Sequence[int]) -> list:
    """Token-id arrays (int32; pairs of arrays when n_fields == 2) for `indices`, in that order."""
    if len(indices) == 0:
      return []
    keys = [int(i) for i in indices]
    reader = self._reader(split)
    if reader is None:
      return [self._fields(e) for e in self.source(split).__getitems__(keys)]
    raw, decode = reader
    records = raw.__getitems__(keys) if len(keys) >= BULK_READ else [raw[k] for k in keys]
    return [decode(r) for r in records]

  def read_all(self, split: str) -> list:
    return self.read(split, range(len(self.source(split))))

  def token_counts(self, split: str, vocab_size: int, chunk: int = 4096) -> np.ndarray:
    """[vocab_size] int64: occurrences of each token id in `split` (both sides of pairs), for frequency-smoothed
    masking. Computed by one pass over the records on first use and kept as `counts.{split}.npy` in the dataset's
    folder (written atomically: concurrent processes may both compute it, with the same result)."""
    path = os.path.join(self.path, f"counts.{split}.npy")
    if os.path.exists(path):
      counts = np.load(path)
    else:
      counts = np.zeros(vocab_size, np.int64)
      n = len(self.source(split))
      for start in range(0, n, chunk):
        records = self.read(split, range(start, min(start + chunk, n)))
        ids = [x for r in records for x in ((r,) if self.n_fields == 1 else r)]
        found = np.bincount(np.concatenate(ids), minlength=vocab_size) if ids else counts[:0]
        if len(found) > len(counts):
          counts = np.pad(counts, (0, len(found) - len(counts)))
        counts[:len(found)] += found
      with atomic_write(path, "wb") as f:
        np.save(f, counts)
    if len(counts) > vocab_size:
      raise UserError(f"{self.path}: token ids up to {len(counts) - 1} do not fit a vocabulary of {vocab_size}; the "
                      "dataset was prepared with another tokenizer (delete it to prepare it again).")
    return np.pad(counts, (0, vocab_size - len(counts)))


def _key(parts: Mapping) -> str:
  return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def prepare(name: str, cache_dir: str, split_texts: Mapping[str, Callable[[], Iterable]], *, n_fields: int,
            encode: Callable[[str], list[int]] | Sequence[Callable[[str], list[int]]], unk_id: int,
            fingerprint: Mapping, max_len: int = 0, describe: str = "",
            validate: Callable[[], None] | None = None) -> PreparedText:
  """Tokenise `split_texts` (split -> callable giving sentences, or pairs when n_fields == 2) unless cached.

  Lines that are empty (blank after stripping, or no token after encoding) and, when `max_len > 0`, lines longer
  than `max_len` tokens are dropped and counted in the manifest (`dropped.empty`, `dropped.too_long`; a line is
  counted once, as empty if it is both); for pairs, a pair is dropped when either side is. `encode` may be one
  function or one per field (each side of a pair has its own language). `validate` runs first, only when
  building.
  """
  encoders = list(encode) if isinstance(encode, (list, tuple)) else [encode] * n_fields
  key = _key({"fingerprint": dict(fingerprint), "max_len": max_len, "n_fields": n_fields,
              "version": PREPARE_VERSION, "splits": sorted(split_texts)})
  path = os.path.join(cache_dir, f"{name}-{key}")
  manifest_path = os.path.join(path, "manifest.json")
  if os.path.exists(manifest_path):
    with open(manifest_path) as f:
      return PreparedText(path, n_fields, json.load(f))

  if validate is not None:
    validate()
  stats: dict[str, dict] = {}
  lengths: dict[str, list] = {}

  def examples(split: str, make: Callable[[], Iterable]) -> Iterator:
    s = stats[split] = {"lines": 0, "sentences": 0, "tokens": 0, "unk": 0, "dropped": {"empty": 0, "too_long": 0}}
    lens = lengths[split] = []
    for item in make():
      s["lines"] += 1
      texts = (item,) if n_fields == 1 else item
      if any(not t.strip() for t in texts):
        s["dropped"]["empty"] += 1
        continue
      ids = [np.asarray(enc(t), np.int32) for enc, t in zip(encoders, texts)]
      if any(len(x) == 0 for x in ids):  # e.g. only characters the normaliser removes
        s["dropped"]["empty"] += 1
        continue
      if max_len > 0 and any(len(x) > max_len for x in ids):
        s["dropped"]["too_long"] += 1
        continue
      s["sentences"] += 1
      s["tokens"] += sum(len(x) for x in ids)
      s["unk"] += int(sum((x == unk_id).sum() for x in ids))
      lens.append([len(x) for x in ids])
      yield tuple(ids)

  tmp = path + ".incomplete"
  if os.path.exists(tmp):
    import shutil
    shutil.rmtree(tmp)
  builder = _builder_class()(n_fields=n_fields, data_dir=tmp, file_format="array_record",
                             split_examples={split: (lambda s=split, m=make: examples(s, m))
                                             for split, make in split_texts.items()})
  builder.download_and_prepare()
  for split, s in stats.items():
    if s["sentences"] == 0:
      import shutil
      shutil.rmtree(tmp, ignore_errors=True)
      raise UserError(f"{describe or name}: split {split!r} has no usable sentence ({s['lines']} lines read, "
                      f"dropped: {s['dropped']}); give it text.")
    arr = np.asarray(lengths[split], np.int32)
    np.save(os.path.join(tmp, f"lengths.{split}.npy"), arr[:, 0] if n_fields == 1 else arr)
  manifest = {"name": name, "describe": describe, "n_fields": n_fields, "max_len": max_len,
              "fingerprint": dict(fingerprint), "version": PREPARE_VERSION, "splits": stats}
  with atomic_write(os.path.join(tmp, "manifest.json")) as f:
    json.dump(manifest, f, indent=1, sort_keys=True)
  os.replace(tmp, path)
  return PreparedText(path, n_fields, manifest)
