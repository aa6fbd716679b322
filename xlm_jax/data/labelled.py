"""Labelled sentence(-pair) data for classification: readers for every layout, one `LabelledSet` out.

A data item is `LANGS:SOURCE` (`config.data.train`, `config.data.eval`, comma-separated items); LANGS is one
language code or several joined by `+`, and `{lang}` in SOURCE is replaced by each of them:

  en:/path/train.tsv                       a TSV (or .jsonl; either may be .gz) with a header: one or two text
                                           columns and a label column, any label set (the generic adapter)
  ar+de+fr:/data/xnli/dev.{lang}.tsv.gz    the XTREME layout of XNLI (premise, hypothesis, label): the same adapter
  de+fr:xnli-official:/path/xnli.dev.tsv   the official XNLI-1.0 release: one 19-column file for all languages,
                                           rows picked by its `language` column (text: sentence1/sentence2,
                                           label: gold_label)
  ar+de:tfds:xnli/validation               TFDS `xnli` (15 languages per record), `tfds:multi_nli/train` (English)
  en:paraphrase:/data/multi30k/task2/train Multi30k task 2 as a paraphrase task (see `paraphrase_pairs`);
                                           splits train, dev (val images 0-506), test (val images 507-1013)

Text columns are found by name (`premise`/`hypothesis`, `sentence1`/`sentence2`, `text_a`/`text_b`, `question`/
`answer`, or one of `sentence`/`text` for single sentences) unless `text_columns` names them; the label column is
`label` or `gold_label` unless `label_column` names it. Every error names the file and line (or the item).
"""
from __future__ import annotations

import dataclasses
import gzip
import io
import json
from typing import Iterator, Sequence

import numpy as np

from xlm_jax import paths
from xlm_jax.errors import UserError

PAIR_COLUMNS = (("premise", "hypothesis"), ("sentence1", "sentence2"), ("text_a", "text_b"), ("question", "answer"),
                ("first", "second"))
SINGLE_COLUMNS = ("sentence", "text")
LABEL_COLUMNS = ("label", "gold_label")
PARAPHRASE_LABELS = ("paraphrase", "different")


@dataclasses.dataclass
class LabelledSet:
  """Examples of one language: `first[i]` (and `second[i]` for pairs) labelled `labels[i]` (a name); `where[i]`
  says where example i came from ('file:line'), for error messages."""

  lang: str
  first: list[str]
  second: list[str] | None
  labels: list[str]
  where: list[str]
  origin: str

  def __len__(self) -> int:
    return len(self.first)

  @property
  def is_pair(self) -> bool:
    return self.second is not None

  def label_ids(self, names: Sequence[str], role: str = "evaluation") -> np.ndarray:
    """int32 ids of the labels in `names` (the training set's order); a label outside it is a `UserError`
    naming the file, line and label."""
    index = {n: i for i, n in enumerate(names)}
    for label, where in zip(self.labels, self.where):
      if label not in index:
        raise UserError(f"{where}: label {label!r} is not one of the training labels {list(names)}; the {role} "
                        f"data ({self.origin}) must use the training data's label set.")
    return np.asarray([index[l] for l in self.labels], np.int32)


@dataclasses.dataclass(frozen=True)
class DataItem:
  """One `LANGS:SOURCE` item, expanded to one language."""

  lang: str
  kind: str      # file | xnli-official | tfds | paraphrase
  source: str    # path (with {lang} replaced) or TFDS name/split
  text: str      # the item as written, for messages


def parse_items(text: str, field: str) -> list[DataItem]:
  """`config.data.train` / `config.data.eval` -> one `DataItem` per language."""
  out = []
  for item in (s.strip() for s in str(text or "").split(",") if s.strip()):
    langs, sep, rest = item.partition(":")
    codes = [c.strip() for c in langs.split("+") if c.strip()]
    if not sep or not rest or not codes or not all(c.replace("_", "").isalnum() for c in codes):
      raise UserError(f"{field} item {item!r} must be LANG:SOURCE, e.g. 'en:/path/train.tsv' or "
                      "'de+fr:/data/dev.{lang}.tsv' (languages joined by '+', {lang} replaced by each).")
    kind, source = "file", rest
    for prefix in ("xnli-official:", "tfds:", "paraphrase:"):
      if rest.startswith(prefix):
        kind, source = prefix[:-1], rest[len(prefix):]
    for code in codes:
      out.append(DataItem(code, kind, source.replace("{lang}", code), item))
  return out


def _open_text(path: str) -> Iterator[str]:
  """Lines of a text file (gzip when the name ends in .gz), without line ends; a missing file is a `UserError`."""
  if not paths.exists(path) or paths.isdir(path):
    raise UserError(f"data file {path} does not exist (or is a folder); check the path in config.data.train / "
                    "config.data.eval.")
  with paths.path(path).open("rb") as raw:
    data = raw.read()
  if path.endswith(".gz"):
    try:
      data = gzip.decompress(data)
    except OSError as e:
      raise UserError(f"data file {path} is not valid gzip ({e}).") from None
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise UserError(f"data file {path} is not UTF-8 text (byte {e.start}).") from None
  return iter(io.StringIO(text, newline=None).read().split("\n"))


def _columns(header: Sequence[str], path: str, text_columns: str, label_column: str) -> tuple[list[int], int]:
  """Indices of the text column(s) and the label column in `header`."""
  where = f"{path}, line 1 (header)"
  names = [h.strip() for h in header]
  lower = [h.lower() for h in names]
  if text_columns:
    wanted = [c.strip() for c in text_columns.split(",") if c.strip()]
    missing = [c for c in wanted if c.lower() not in lower]
    if missing or len(wanted) not in (1, 2):
      raise UserError(f"{where}: no column {missing[0]!r} (columns: {names}); config.classify.text_columns="
                      f"{text_columns!r} must name one or two of them." if missing else
                      f"{where}: config.classify.text_columns={text_columns!r} must name one or two columns.")
    text = [lower.index(c.lower()) for c in wanted]
  else:
    text = next(([lower.index(a), lower.index(b)] for a, b in PAIR_COLUMNS if a in lower and b in lower), None)
    if text is None:
      partial = next(((a, b) for a, b in PAIR_COLUMNS if (a in lower) != (b in lower)), None)
      if partial is not None:
        have, lack = (partial[0], partial[1]) if partial[0] in lower else (partial[1], partial[0])
        raise UserError(f"{where}: column {have!r} is there but {lack!r} is missing (columns: {names}); add it, or "
                        "name the text columns with config.classify.text_columns.")
      text = next(([lower.index(c)] for c in SINGLE_COLUMNS if c in lower), None)
    if text is None:
      raise UserError(f"{where}: no text column (columns: {names}); expected premise/hypothesis, sentence1/"
                      "sentence2, text_a/text_b or sentence/text, or name them with config.classify.text_columns.")
  wanted_label = [label_column] if label_column else list(LABEL_COLUMNS)
  label = next((lower.index(c.lower()) for c in wanted_label if c.lower() in lower), None)
  if label is None:
    raise UserError(f"{where}: no label column {' or '.join(repr(c) for c in wanted_label)} (columns: {names}); "
                    "add one, or name it with config.classify.label_column.")
  return text, label


def read_table(path: str, lang: str, *, text_columns: str = "", label_column: str = "",
               language_column: bool = False) -> LabelledSet:
  """A TSV or JSONL file with a header (JSONL: keys), one or two text columns and a label column.

  `language_column`: keep only the rows whose `language` column is `lang` (the official XNLI layout)."""
  lines = _open_text(path)
  is_json = ".jsonl" in paths.basename(path) or ".json" in paths.basename(path)
  first, second, labels, where = [], [], [], []
  header = None
  lang_col = None
  seen_langs: set[str] = set()
  n_lines = 0
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    n_lines += 1
    if is_json:
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise UserError(f"{path}, line {number}: not a JSON object ({e.msg}).") from None
      if not isinstance(record, dict):
        raise UserError(f"{path}, line {number}: not a JSON object.")
      if header is None:
        header = list(record)
        text, label = _columns(header, path, text_columns, label_column)
      fields = [record.get(k) for k in header]
      missing = [header[i] for i in (*text, label) if fields[i] is None]
      if missing:
        raise UserError(f"{path}, line {number}: no field {missing[0]!r} (the first record has {header}).")
      fields = ["" if f is None else str(f) for f in fields]
    else:
      fields = line.rstrip("\r").split("\t")
      if header is None:
        header = fields
        text, label = _columns(header, path, text_columns, label_column)
        if language_column:
          if "language" not in [h.strip().lower() for h in header]:
            raise UserError(f"{path}, line 1 (header): no 'language' column (columns: {header}); the official XNLI "
                            "layout has one; read other files without the 'xnli-official:' prefix.")
          lang_col = [h.strip().lower() for h in header].index("language")
        continue
      if len(fields) < len(header):
        raise UserError(f"{path}, line {number}: {len(fields)} tab-separated field(s), the header has {len(header)} "
                        f"({header}); a column is missing on this line.")
    if lang_col is not None:
      seen_langs.add(fields[lang_col].strip())
      if fields[lang_col].strip() != lang:
        continue
    first.append(fields[text[0]].strip())
    if len(text) == 2:
      second.append(fields[text[1]].strip())
    labels.append(fields[label].strip())
    where.append(f"{path}, line {number}")
  if header is None:
    raise UserError(f"data file {path} is empty (no header, no rows); give a file with a header line and rows.")
  if not first:
    if lang_col is not None:
      raise UserError(f"{path} has no rows for language {lang!r} (its language column has "
                      f"{', '.join(sorted(seen_langs)) or 'nothing'}).")
    raise UserError(f"data file {path} has a header but no rows.")
  blank = [w for w, l in zip(where, labels) if not l]
  if blank:
    raise UserError(f"{blank[0]}: the label is empty; every row needs a label.")
  return LabelledSet(lang, first, second if len(text) == 2 else None, labels, where, path)


def read_tfds(name: str, lang: str, data_dir: str | None = None) -> LabelledSet:
  """TFDS `xnli/<split>` (premise: one text per language, hypothesis: `{language, translation}` lists) or
  `multi_nli/<split>` (English premise/hypothesis); labels by the dataset's ClassLabel names. Read with
  `tfds.data_source` (no download: the dataset must be prepared, or mocked in tests)."""
  import tensorflow_datasets as tfds
  import tensorflow_datasets.text  # noqa: F401  (registers xnli and multi_nli)
  dataset, _, split = name.partition("/")
  if dataset not in ("xnli", "multi_nli") or not split:
    raise UserError(f"TFDS classification source {name!r} must be 'xnli/<split>' or 'multi_nli/<split>' (splits: "
                    "xnli test, validation; multi_nli train, validation_matched, validation_mismatched).")
  if dataset == "multi_nli" and lang != "en":
    raise UserError(f"TFDS multi_nli is English; the item names language {lang!r}.")
  try:
    builder = tfds.builder(dataset, data_dir=data_dir or None)
    names = list(builder.info.features["label"].names)
    source = tfds.data_source(dataset, split=split, data_dir=data_dir or None, download=False)
  except Exception as e:  # tfds raises several types for a missing dataset or split
    raise UserError(f"TFDS dataset {name!r} could not be opened ({str(e).splitlines()[0] if str(e) else e}); "
                    "prepare it first (tfds build --file_format=array_record); xlm_jax never downloads.") from None
  as_str = lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v)
  first, second, labels, where = [], [], [], []
  for i in range(len(source)):
    record = source[i]
    if dataset == "multi_nli":
      premise, hypothesis = as_str(record["premise"]), as_str(record["hypothesis"])
    else:
      premises = record["premise"]
      if lang not in premises:
        raise UserError(f"TFDS {name}: language {lang!r} is not among its languages {sorted(premises)}.")
      premise = as_str(premises[lang])
      hyp = record["hypothesis"]
      langs = [as_str(l) for l in hyp["language"]]
      if lang not in langs:
        continue
      hypothesis = as_str(hyp["translation"][langs.index(lang)])
    label = int(record["label"])
    if not 0 <= label < len(names):
      continue  # MultiNLI marks pairs without a gold label -1
    first.append(premise.strip())
    second.append(hypothesis.strip())
    labels.append(names[label])
    where.append(f"TFDS {name}, record {i}")
  if not first:
    raise UserError(f"TFDS {name} has no labelled records in language {lang!r}.")
  return LabelledSet(lang, first, second, labels, where, f"tfds:{name}")


def paraphrase_pairs(folder: str, split: str, lang: str, seed: int = 0) -> LabelledSet:
  """A balanced paraphrase task from Multi30k task 2 (`{train,val}.{1..5}.{en,de}.gz`: five independent
  descriptions per image): for each image, one pair of two of its descriptions (`paraphrase`) and one pair of a
  description of it and one of another image (`different`); which descriptions and which other image are drawn
  from `seed`. Splits: `train`; `dev` and `test` are the first and second halves of the val images."""
  if split not in ("train", "dev", "test"):
    raise UserError(f"paraphrase split {split!r} must be train, dev or test.")
  file_split = "train" if split == "train" else "val"
  captions = [list(_open_text(paths.join(folder, f"{file_split}.{k}.{lang}.gz"))) for k in range(1, 6)]
  n = min(len([l for l in c if l.strip()]) for c in captions)
  captions = [[l.strip() for l in c[:n]] for c in captions]
  images = np.arange(n) if split == "train" else (np.arange(n // 2) if split == "dev" else np.arange(n // 2, n))
  rng = np.random.default_rng([seed, {"train": 0, "dev": 1, "test": 2}[split]])
  first, second, labels, where = [], [], [], []
  for i in images:
    a, b = rng.choice(5, size=2, replace=False)
    other = int(rng.choice(images[images != i]))
    c = int(rng.integers(5))
    pairs = [(captions[a][i], captions[b][i], PARAPHRASE_LABELS[0]), (captions[a][i], captions[c][other],
                                                                     PARAPHRASE_LABELS[1])]
    for s1, s2, label in pairs:
      if s1 and s2:
        first.append(s1)
        second.append(s2)
        labels.append(label)
        where.append(f"{folder}/{file_split}.*.{lang}.gz, image {i}")
  return LabelledSet(lang, first, second, labels, where, f"paraphrase:{folder}/{split}")


def read_item(item: DataItem, *, text_columns: str = "", label_column: str = "", tfds_data_dir: str = "",
              seed: int = 0) -> LabelledSet:
  """The examples one `DataItem` names."""
  if item.kind == "tfds":
    return read_tfds(item.source, item.lang, tfds_data_dir)
  if item.kind == "paraphrase":
    folder, _, split = item.source.rstrip("/").rpartition("/")
    return paraphrase_pairs(folder, split, item.lang, seed)
  return read_table(item.source, item.lang, text_columns=text_columns, label_column=label_column,
                    language_column=item.kind == "xnli-official")


def write_tsv(path: str, data: LabelledSet) -> None:
  """A LabelledSet as a TSV the generic adapter reads back (translated sets are cached this way)."""
  clean = lambda s: s.replace("\t", " ").replace("\n", " ")
  header = ["premise", "hypothesis", "label"] if data.is_pair else ["sentence", "label"]
  rows = ["\t".join(header)]
  for i in range(len(data)):
    cells = [data.first[i]] + ([data.second[i]] if data.is_pair else []) + [data.labels[i]]
    rows.append("\t".join(clean(c) for c in cells))
  paths.write_text(path, "\n".join(rows) + "\n")
