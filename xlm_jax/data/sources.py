"""Where raw text comes from: the generated demo corpus, a local folder, (later) TFDS registered datasets.

A `TextSource` answers two questions, per split: the monolingual sentences of a language, and the aligned
sentence pairs of a language pair. Local folders follow XLM's naming:

  {split}.{lang}[.gz]                         monolingual text, one sentence per line
  {split}.{l1}-{l2}.{l1}[.gz], ....{l2}[.gz]   parallel text, line i of one file translates line i of the other

and a folder whose `{split}.{lang}` files are all aligned with one another (Multi30k) may declare so with
`aligned=True`: its pairs are then read from the monolingual files.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Callable, Iterator, Sequence

from xlm_jax.errors import UserError
from xlm_jax.io_utils import read_lines

SPLITS = ("train", "valid", "test")


def _find(folder: str, stem: str) -> str | None:
  for name in (stem, stem + ".gz"):
    path = os.path.join(folder, name)
    if os.path.exists(path):
      return path
  return None


def file_fingerprint(paths: Sequence[str]) -> str:
  """Identity of input files for caching: path, size and modification time (not content: corpora are big)."""
  h = hashlib.sha256()
  for p in paths:
    st = os.stat(p)
    h.update(f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
  return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class LocalFolder:
  """Text files in one folder, XLM naming. `split_names` maps our split names onto file prefixes."""

  folder: str
  aligned: bool = False
  split_names: tuple[tuple[str, str], ...] = (("train", "train"), ("valid", "valid"), ("test", "test"))

  @property
  def name(self) -> str:
    return self.folder

  def _prefix(self, split: str) -> str:
    return dict(self.split_names).get(split, split)

  def mono_path(self, split: str, lang: str) -> str | None:
    return _find(self.folder, f"{self._prefix(split)}.{lang}")

  def para_paths(self, split: str, l1: str, l2: str) -> tuple[str, str] | None:
    a, b = sorted((l1, l2))
    pa = _find(self.folder, f"{self._prefix(split)}.{a}-{b}.{a}")
    pb = _find(self.folder, f"{self._prefix(split)}.{a}-{b}.{b}")
    if pa and pb:
      return (pa, pb) if l1 == a else (pb, pa)
    if self.aligned:
      p1, p2 = self.mono_path(split, l1), self.mono_path(split, l2)
      if p1 and p2:
        return p1, p2
    return None

  def languages(self, split: str = "train") -> list[str]:
    """Languages with a monolingual file for `split`."""
    prefix = self._prefix(split) + "."
    found = set()
    if os.path.isdir(self.folder):
      for name in os.listdir(self.folder):
        stem = name[:-3] if name.endswith(".gz") else name
        if stem.startswith(prefix) and "-" not in stem[len(prefix):] and "." not in stem[len(prefix):]:
          found.add(stem[len(prefix):])
    return sorted(found)

  def check_mono(self, split: str, lang: str) -> str:
    """The path of a monolingual file, or a UserError naming what is missing."""
    if not os.path.isdir(self.folder):
      raise UserError(f"corpus folder {self.folder!r} does not exist; set config.data.corpus to a folder of "
                      "{split}.{lang} text files or to 'generated'.")
    path = self.mono_path(split, lang)
    if path is None:
      raise UserError(f"no file {self._prefix(split)}.{lang}[.gz] in {self.folder!r}: unknown language {lang!r} for "
                      f"this corpus (it has {self.languages(split) or 'no languages'}); fix config.data.languages.")
    if os.path.getsize(path) == 0:
      raise UserError(f"corpus file {path!r} is empty; give it text or remove {lang!r} from the languages.")
    return path

  def mono(self, split: str, lang: str) -> Callable[[], Iterator[str]]:
    path = self.check_mono(split, lang)
    return lambda: read_lines(path)

  def fingerprint(self, paths: Sequence[str]) -> str:
    return file_fingerprint(paths)


def generated_corpus(workdir: str, languages: Sequence[str], seed: int, sizes: dict | None = None) -> LocalFolder:
  """Write (once) the project's synthetic corpus under `workdir/corpus` and return it as a local folder."""
  from xlm_jax.data import synthetic
  unknown = sorted(set(languages) - set(synthetic.LANGUAGES))
  if unknown:
    raise UserError(f"the generated corpus has no language(s) {unknown}; it has {list(synthetic.LANGUAGES)}. "
                    "Fix config.data.languages.")
  out = os.path.join(workdir, "corpus")
  synthetic.generate_corpus(out, languages=tuple(sorted(languages)), seed=seed, **(sizes or {}))
  return LocalFolder(out)
