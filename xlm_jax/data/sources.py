"""Where raw text comes from: the generated demo corpus, local folders, TFDS registered datasets.

A source answers, per split, two questions: the monolingual sentences of a language (`mono`) and the aligned
sentence pairs of a language pair (`para`). Both return a *callable* that opens a fresh iterator, so text is
streamed, never held whole in memory. `fingerprint` identifies the inputs for the preparation cache.

Local folders follow XLM's naming:

  {split}.{lang}[.gz]                          monolingual text, one sentence per line
  {split}.{l1}-{l2}.{l1}[.gz] + .{l2}[.gz]     parallel text (l1 < l2), line i of one translates line i of the other

A folder whose `{split}.{lang}` files are all translations of one another (Multi30k) sets `aligned=True`: its pairs
come from the monolingual files. `split_names` maps our split names (train/valid/test) onto file prefixes
(Multi30k: valid -> val, test -> test_2016_flickr).

TFDS sources are named `tfds:<name>[/<config>]`, e.g. `tfds:wmt14_translate/fr-en` (pairs, and each side as
monolingual text) or `tfds:wikipedia/20230601.fr` (articles split into lines, monolingual). They are read with
`tfds.data_source` (ArrayRecord, no TensorFlow needed); they must have been downloaded and prepared beforehand
(`tfds build ...` or `download_and_prepare`); xlm_jax never downloads.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
from typing import Callable, Iterator, Sequence

from xlm_jax import paths
from xlm_jax.errors import UserError
from xlm_jax.io_utils import count_lines, read_lines

SPLITS = ("train", "valid", "test")
Texts = Callable[[], Iterator]


def _find(folder: str, stem: str) -> str | None:
  for name in (stem, stem + ".gz"):
    path = paths.join(folder, name)
    if paths.exists(path):
      return path
  return None


def file_fingerprint(files: Sequence[str]) -> str:
  """Identity of input files for caching: path, size and modification time (not content: corpora are big)."""
  h = hashlib.sha256()
  for p in files:
    st = paths.path(p).stat()
    h.update(f"{paths.resolve(p)}|{st.length}|{st.mtime}\n".encode())
  return h.hexdigest()[:16]


def _zip_lines(p1: str, p2: str) -> Iterator[tuple[str, str]]:
  """Aligned lines of two files. Trap: `zip` would stop silently at the shorter file; when one file ends before
  the other, this raises the `check_aligned` error (both files, both counts) instead."""
  for a, b in itertools.zip_longest(read_lines(p1), read_lines(p2)):
    if a is None or b is None:
      check_aligned(p1, p2)  # raises, naming both counts, unless a file changed while being read
      raise UserError(f"parallel files {p1} and {p2} changed while being read; read them again when they are "
                      "complete.")
    yield a, b


def check_aligned(p1: str, p2: str) -> None:
  """Parallel files must have the same number of lines; the error names both files and both counts."""
  n1, n2 = count_lines(p1), count_lines(p2)
  if n1 != n2:
    raise UserError(f"parallel files differ in length: {p1} has {n1} lines, {p2} has {n2}; line i of one must "
                    "translate line i of the other, so re-align them (or drop the pair from the step specs).")


@dataclasses.dataclass(frozen=True)
class LocalFolder:
  """Text files in one folder, XLM naming (see the module docstring)."""

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
    for name in paths.listdir(self.folder):
        stem = name[:-3] if name.endswith(".gz") else name
        rest = stem[len(prefix):]
        if stem.startswith(prefix) and rest and "-" not in rest and "." not in rest:
          found.add(rest)
    return sorted(found)

  def pairs(self, split: str = "train") -> list[tuple[str, str]]:
    prefix = self._prefix(split) + "."
    found = set()
    for name in paths.listdir(self.folder):
        stem = name[:-3] if name.endswith(".gz") else name
        rest = stem[len(prefix):].split(".")
        if stem.startswith(prefix) and len(rest) == 2 and rest[0].count("-") == 1:
          found.add(tuple(rest[0].split("-")))
    return sorted(found)

  def _check_folder(self) -> None:
    if not paths.isdir(self.folder):
      raise UserError(f"corpus folder {self.folder!r} does not exist; set config.data.corpus to a folder of "
                      "{split}.{lang} text files or to 'generated'.")

  def has_mono(self, split: str, lang: str) -> bool:
    return self.mono_path(split, lang) is not None

  def has_para(self, split: str, l1: str, l2: str) -> bool:
    return self.para_paths(split, l1, l2) is not None

  def check_mono(self, split: str, lang: str) -> str:
    """The path of a monolingual file, or a UserError naming what is missing."""
    self._check_folder()
    path = self.mono_path(split, lang)
    if path is None:
      raise UserError(f"no file {self._prefix(split)}.{lang}[.gz] in {self.folder!r}: unknown language {lang!r} for "
                      f"this corpus (it has {self.languages(split) or 'no languages'}); fix config.data.languages.")
    if paths.path(path).stat().length == 0:
      raise UserError(f"corpus file {path!r} is empty; give it text or remove {lang!r} from the languages.")
    return path

  def check_para(self, split: str, l1: str, l2: str) -> tuple[str, str]:
    self._check_folder()
    files = self.para_paths(split, l1, l2)
    if files is None:
      a, b = sorted((l1, l2))
      raise UserError(f"no parallel data for {l1}-{l2} in {self.folder!r} (expected {self._prefix(split)}.{a}-{b}.{a} "
                      f"and .{b}{' or aligned monolingual files' if self.aligned else ''}); remove {l1}-{l2} from the "
                      "step specs or add the files.")
    for p in files:
      if paths.path(p).stat().length == 0:
        raise UserError(f"corpus file {p!r} is empty.")
    return files

  def validate_para(self, split: str, l1: str, l2: str) -> None:
    """A full pass over both files: equal line counts (run before preparing, not on every start)."""
    check_aligned(*self.check_para(split, l1, l2))

  def mono(self, split: str, lang: str) -> Texts:
    path = self.check_mono(split, lang)
    return lambda: read_lines(path)

  def para(self, split: str, l1: str, l2: str) -> Texts:
    p1, p2 = self.check_para(split, l1, l2)
    return lambda: _zip_lines(p1, p2)

  def mono_fingerprint(self, split: str, lang: str) -> str:
    return file_fingerprint([self.check_mono(split, lang)])

  def mono_files(self, split: str, lang: str) -> list[str]:
    """The local files `mono` reads (preparation watches them for changes while it reads)."""
    return [self.check_mono(split, lang)]

  def para_files(self, split: str, l1: str, l2: str) -> list[str]:
    return list(self.check_para(split, l1, l2))

  def para_fingerprint(self, split: str, l1: str, l2: str) -> str:
    return file_fingerprint(list(self.check_para(split, l1, l2)))


TFDS_SPLITS = {"train": "train", "valid": "validation", "test": "test"}


@dataclasses.dataclass
class TfdsSource:
  """A TFDS registered dataset: translation (`{l1: text, l2: text}` features) or text (`text` feature)."""

  name: str
  data_dir: str | None = None

  def _builder(self):
    import tensorflow_datasets as tfds
    import tensorflow_datasets.text  # noqa: F401  (registers wikipedia and friends)
    import tensorflow_datasets.translate  # noqa: F401  (registers wmt14_translate, wmt16_translate, ...)
    try:
      return tfds.builder(self.name, data_dir=self.data_dir)
    except Exception as e:  # tfds raises several types for unknown names and configs
      raise UserError(f"TFDS dataset {self.name!r} is not available: {str(e).splitlines()[0]}") from None

  @functools.cached_property
  def _info(self):
    b = self._builder()
    features = b.info.features
    langs = list(getattr(features, "languages", None) or [])
    if not langs:
      keys = list(features.keys())
      langs = [k for k in keys if len(k) in (2, 3) and k.isalpha()]
    config = b.builder_config.name if b.builder_config else ""
    text_lang = None
    if "text" in features.keys():
      text_lang = config.split(".")[-1] if "." in config else None
    return {"langs": langs, "text_lang": text_lang}

  def has_mono(self, split: str, lang: str) -> bool:
    return lang in self._info["langs"] or lang == self._info["text_lang"]

  def has_para(self, split: str, l1: str, l2: str) -> bool:
    return l1 in self._info["langs"] and l2 in self._info["langs"]

  def _open(self, split: str):
    """The random-access data source of a split (opened once); fails now, not mid-preparation, when it is not
    there. `download=False`: xlm_jax never downloads."""
    import tensorflow_datasets as tfds
    name = TFDS_SPLITS.get(split, split)
    opened = self.__dict__.setdefault("_opened", {})
    if name in opened:
      return opened[name]
    try:
      opened[name] = tfds.data_source(self.name, split=name, data_dir=self.data_dir, download=False)
      return opened[name]
    except Exception as e:  # tfds raises several types for a missing dataset, config or split
      reason = str(e).splitlines()[0] if str(e) else type(e).__name__
      builder = self._builder()
      if not builder.is_prepared():
        reason = f"it is not prepared in {builder.data_dir}"
      raise UserError(f"TFDS dataset {self.name!r}, split {name!r}, could not be opened: {reason}. Prepare it first "
                      f"in the ArrayRecord format (for example `tfds build {self.name.split('/')[0]} "
                      "--file_format=array_record`); xlm_jax never downloads data.") from None

  @staticmethod
  def _records(source) -> Iterator[dict]:
    for i in range(len(source)):
      yield source[i]

  def mono(self, split: str, lang: str) -> Texts:
    if not self.has_mono(split, lang):
      raise UserError(f"TFDS dataset {self.name!r} has no {split} text in language {lang!r}.")
    key = "text" if lang == self._info["text_lang"] else lang
    source = self._open(split)

    def lines() -> Iterator[str]:
      for record in self._records(source):
        text = _as_str(record[key])
        for line in text.split("\n"):
          if line.strip():
            yield line.strip()

    return lines

  def para(self, split: str, l1: str, l2: str) -> Texts:
    if not self.has_para(split, l1, l2):
      raise UserError(f"TFDS dataset {self.name!r} has no {split} pairs {l1}-{l2}; it has languages "
                      f"{self._info['langs']}.")
    source = self._open(split)
    return lambda: ((_as_str(r[l1]).replace("\n", " "), _as_str(r[l2]).replace("\n", " "))
                    for r in self._records(source))

  def mono_fingerprint(self, split: str, lang: str) -> str:
    return self._fingerprint(split)

  def validate_para(self, split: str, l1: str, l2: str) -> None:
    """TFDS translation records hold both sides, so they are aligned by construction."""

  def para_fingerprint(self, split: str, l1: str, l2: str) -> str:
    return self._fingerprint(split)

  def mono_files(self, split: str, lang: str) -> list[str]:
    return []  # TFDS records are immutable once prepared; their version is in the fingerprint

  def para_files(self, split: str, l1: str, l2: str) -> list[str]:
    return []

  def _fingerprint(self, split: str) -> str:
    b = self._builder()
    return hashlib.sha256(f"{self.name}|{b.data_dir}|{b.info.version}|{split}".encode()).hexdigest()[:16]


def _as_str(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class Corpus:
  """Several sources searched in order: the first one that has a language (or pair) provides it."""

  def __init__(self, sources: Sequence):
    self.sources = list(sources)

  def _find(self, kind: str, split: str, *langs: str):
    for s in self.sources:
      if getattr(s, f"has_{kind}")(split, *langs):
        return s
    return None

  def has_mono(self, split: str, lang: str) -> bool:
    return self._find("mono", split, lang) is not None

  def has_para(self, split: str, l1: str, l2: str) -> bool:
    return self._find("para", split, l1, l2) is not None

  def mono_source(self, split: str, lang: str):
    s = self._find("mono", split, lang)
    if s is None:
      # let the first source explain what is missing (file names, available languages)
      self.sources[0].mono(split, lang)
      raise UserError(f"no {split} text for language {lang!r} in {[x.name for x in self.sources]}.")
    return s

  def para_source(self, split: str, l1: str, l2: str):
    s = self._find("para", split, l1, l2)
    if s is None:
      self.sources[0].para(split, l1, l2)
      raise UserError(f"no {split} pairs {l1}-{l2} in {[x.name for x in self.sources]}.")
    return s

  def mono(self, split: str, lang: str) -> Texts:
    return self.mono_source(split, lang).mono(split, lang)

  def para(self, split: str, l1: str, l2: str) -> Texts:
    return self.para_source(split, l1, l2).para(split, l1, l2)

  def mono_fingerprint(self, split: str, lang: str) -> str:
    return self.mono_source(split, lang).mono_fingerprint(split, lang)

  def validate_para(self, split: str, l1: str, l2: str) -> None:
    self.para_source(split, l1, l2).validate_para(split, l1, l2)

  def para_fingerprint(self, split: str, l1: str, l2: str) -> str:
    return self.para_source(split, l1, l2).para_fingerprint(split, l1, l2)

  def mono_files(self, split: str, lang: str) -> list[str]:
    return self.mono_source(split, lang).mono_files(split, lang)

  def para_files(self, split: str, l1: str, l2: str) -> list[str]:
    return self.para_source(split, l1, l2).para_files(split, l1, l2)


def generated_corpus(workdir: str, languages: Sequence[str], seed: int, sizes: dict | None = None) -> LocalFolder:
  """Write (once) the project's synthetic corpus under `workdir/corpus` and return it as a local folder."""
  from xlm_jax.data import synthetic
  unknown = sorted(set(languages) - set(synthetic.LANGUAGES))
  if unknown:
    raise UserError(f"the generated corpus has no language(s) {unknown}; it has {list(synthetic.LANGUAGES)}. "
                    "Fix config.data.languages.")
  from xlm_jax.parallel import process_zero_first
  # a remote workdir gets the (local) generated corpus beside its prepared data
  out = paths.join(paths.data_cache_dir("", workdir) if paths.is_remote(workdir) else workdir, "corpus")
  process_zero_first(lambda: synthetic.generate_corpus(out, languages=tuple(sorted(languages)), seed=seed,
                                                       **(sizes or {})), "generated-corpus")
  return LocalFolder(out)


def parse_split_names(text: str) -> tuple[tuple[str, str], ...]:
  """'valid:val,test:test_2016_flickr' -> (('train','train'), ('valid','val'), ('test','test_2016_flickr'))."""
  names = dict((s, s) for s in SPLITS)
  for item in (x.strip() for x in (text or "").split(",")):
    if not item:
      continue
    if ":" not in item:
      raise UserError(f"config.data.split_names entry {item!r} must look like 'valid:val'.")
    ours, theirs = item.split(":", 1)
    names[ours.strip()] = theirs.strip()
  return tuple(names.items())


def make_corpus(spec: str, *, workdir: str, languages: Sequence[str], seed: int, generated_sizes: dict | None = None,
                aligned: bool = False, split_names: str = "", tfds_data_dir: str = "") -> Corpus:
  """Sources from `config.data.corpus`: comma-separated 'generated', folder paths and 'tfds:<name>' entries."""
  if not spec or not str(spec).strip():
    raise UserError("config.data.corpus is empty; set it to 'generated', a folder of {split}.{lang} files, or "
                    "'tfds:<name>'.")
  sources = []
  for item in (x.strip() for x in str(spec).split(",") if x.strip()):
    if item == "generated":
      sources.append(generated_corpus(workdir, languages, seed, generated_sizes))
    elif item.startswith("tfds:"):
      sources.append(TfdsSource(item[len("tfds:"):], tfds_data_dir or None))
    else:
      sources.append(LocalFolder(paths.resolve(item), aligned=aligned,  # a folder or a gs:// URL
                                 split_names=parse_split_names(split_names)))
  return Corpus(sources)
