"""Bad input data stops pretraining before training with one clear sentence naming the culprit (issue #4).

Through the real entry point (main.py in a subprocess): parallel files of different lengths, bytes that are not
UTF-8, a language the tokenizer lacks, a step spec naming a pair without parallel files, a step spec naming an
unknown language. The five runs start together (they spend their time importing, not training) and each must
exit with status 2, print exactly one `error: ...` line and no traceback, and leave no checkpoint behind.

In-process, where a subprocess would add nothing: the exact line of a bad byte far into a plain or gzip file,
bad bytes met while preparing (not while training the tokenizer), the manifest counts of empty and over-long
lines, pairs that do not fit a row, aligned (Multi30k-style) folders of different lengths, unreadable tokenizers.
"""
from __future__ import annotations

import concurrent.futures
import gzip
import json
import os
import shutil

import numpy as np
import pytest

from conftest import run_main
from xlm_jax.data.rows import PairIndex
from xlm_jax.data.sources import Corpus, LocalFolder
from xlm_jax.errors import UserError
from xlm_jax.io_utils import count_lines, read_lines
from xlm_jax.tokenizer import train_sentencepiece
from xlm_jax.train.pretrain import data_report, load_tokenizer, prepare_mono, prepare_para

BAD_LINE = 1234  # 1-based line of train.xb that gets a Latin-1 byte


def copy_folder(dest, corpus_dir, langs=("xa", "xb"), pairs=()) -> str:
  """A corpus folder with the train and valid files of `langs` and of the `pairs` (e.g. 'xa-xb')."""
  os.makedirs(dest)
  names = [f"{s}.{l}" for s in ("train", "valid") for l in langs]
  names += [f"{s}.{p}.{l}" for s in ("train", "valid") for p in pairs for l in p.split("-")]
  for name in names:
    shutil.copy(os.path.join(corpus_dir, name), os.path.join(dest, name))
  return str(dest)


def replace_line(path, lineno: int, data: bytes) -> None:
  with open(path, "rb") as f:
    lines = f.read().split(b"\n")
  lines[lineno - 1] = data
  with open(path, "wb") as f:
    f.write(b"\n".join(lines))


def drop_last_lines(path, n: int) -> None:
  with open(path, "rb") as f:
    lines = f.read().splitlines(keepends=True)
  with open(path, "wb") as f:
    f.write(b"".join(lines[:-n]))


def one_error_line(proc) -> str:
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert len(lines) == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  return lines[0]


def written_files(workdir) -> list[str]:
  """What a failed run left in its workdir (relative paths)."""
  return sorted(os.path.relpath(os.path.join(r, n), workdir) for r, _, files in os.walk(workdir) for n in files)


@pytest.fixture(scope="module")
def tokenizer_xa_xb(corpus_dir, tmp_path_factory) -> str:
  """A tokenizer.json trained on xa and xb only (it lacks xc)."""
  tok = train_sentencepiece({l: [os.path.join(corpus_dir, f"train.{l}")] for l in ("xa", "xb")}, 300,
                            n_sentences=3000)
  path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
  path.write_text(json.dumps(tok.state()))
  return str(path)


@pytest.fixture(scope="module")
def failures(corpus_dir, tokenizer_xa_xb, tmp_path_factory) -> dict:
  """name -> (CompletedProcess, workdir, corpus folder) of main.py runs on bad data, run concurrently."""
  root = tmp_path_factory.mktemp("bad_data")
  cases = {}

  folder = copy_folder(root / "mismatch", corpus_dir, pairs=("xa-xb",))
  drop_last_lines(os.path.join(folder, "train.xa-xb.xb"), 3)  # 1000 lines against 997
  cases["mismatch"] = (folder, {"data.mlm_steps": "xa,xb,xa-xb", "data.tokenizer": tokenizer_xa_xb})

  folder = copy_folder(root / "not_utf8", corpus_dir)
  replace_line(os.path.join(folder, "train.xb"), BAD_LINE, "déjà vu".encode("latin-1"))
  cases["not_utf8"] = (folder, {"data.mlm_steps": "xa,xb"})  # found while training the tokenizer

  folder = copy_folder(root / "three", corpus_dir, langs=("xa", "xb", "xc"))
  cases["tokenizer_lacks"] = (folder, {"data.languages": "xa,xb,xc", "data.mlm_steps": "xa,xb,xc",
                                       "data.tokenizer": tokenizer_xa_xb})

  folder = copy_folder(root / "mono_only", corpus_dir)
  cases["missing_pair"] = (folder, {"data.mlm_steps": "xa,xb,xa-xb", "data.tokenizer": tokenizer_xa_xb})
  cases["unknown_step_language"] = (folder, {"data.mlm_steps": "xa,xb", "data.clm_steps": "xa,xd"})

  def run(name: str):
    folder, overrides = cases[name]
    workdir = str(root / f"w_{name}")
    proc = run_main(workdir, {"data.corpus": folder, "data.languages": "xa,xb", **overrides})
    return name, (proc, workdir, folder)

  with concurrent.futures.ThreadPoolExecutor(len(cases)) as pool:
    return dict(pool.map(run, cases))


def test_parallel_files_of_different_lengths(failures):
  proc, workdir, folder = failures["mismatch"]
  line = one_error_line(proc)
  assert os.path.join(folder, "train.xa-xb.xa") in line and os.path.join(folder, "train.xa-xb.xb") in line
  assert "1000 lines" in line and "997" in line
  # checked before anything is prepared: no dataset, no checkpoint
  assert not [f for f in written_files(workdir) if f.endswith("manifest.json") or f.startswith("checkpoints")]


def test_bytes_that_are_not_utf8(failures):
  proc, workdir, folder = failures["not_utf8"]
  line = one_error_line(proc)
  assert f"{os.path.join(folder, 'train.xb')}, line {BAD_LINE}:" in line
  assert "0xe9" in line and "UTF-8" in line
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))


def test_language_the_tokenizer_lacks(failures, tokenizer_xa_xb):
  proc, workdir, _ = failures["tokenizer_lacks"]
  line = one_error_line(proc)
  assert tokenizer_xa_xb in line and "lacks language(s) ['xc']" in line and "'xa', 'xb'" in line
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))


def test_step_spec_naming_a_pair_without_parallel_files(failures):
  proc, workdir, folder = failures["missing_pair"]
  line = one_error_line(proc)
  assert "no parallel data for xa-xb" in line and folder in line and "train.xa-xb.xa" in line
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))


def test_step_spec_naming_an_unknown_language(failures):
  proc, workdir, _ = failures["unknown_step_language"]
  line = one_error_line(proc)
  assert "clm_steps names language 'xd'" in line and "config.data.languages ['xa', 'xb']" in line
  assert written_files(workdir) == []


# ------------------------------------------------------------------------------------------------ in-process


@pytest.mark.parametrize("gz", [False, True])
def test_bad_byte_is_reported_at_its_exact_line(tmp_path, gz):
  # a strict decoder fails on the whole 8 KB chunk and would name a line hundreds of lines too early
  lines = [f"sentence number {i} ünïcode".encode() for i in range(1, 3001)]
  lines[2499] = b"caf\xe9 au lait"
  data = b"\n".join(lines) + b"\n"
  path = tmp_path / ("bad.txt.gz" if gz else "bad.txt")
  path.write_bytes(gzip.compress(data) if gz else data)
  seen = []
  with pytest.raises(UserError, match=rf"bad\.txt(\.gz)?, line 2500: byte 0xe9 at character 4 is not UTF-8"):
    for line in read_lines(path):
      seen.append(line)
  assert len(seen) == 2499 and seen[-1] == "sentence number 2499 ünïcode"


def test_truncated_gzip_names_the_file(tmp_path):
  data = b"".join(b"%d %s\n" % (i, os.urandom(6).hex().encode()) for i in range(5000))
  path = tmp_path / "cut.xa.gz"
  path.write_bytes(gzip.compress(data)[:20000])
  with pytest.raises(UserError, match=r"cut\.xa\.gz: the gzip data is corrupt or truncated"):
    count_lines(path)


def test_bad_bytes_met_while_preparing(tmp_path, corpus_dir, tokenizer_xa_xb):
  folder = copy_folder(tmp_path / "c", corpus_dir)
  replace_line(os.path.join(folder, "valid.xa"), 77, b"\xff\xfe")
  tok = load_tokenizer(tokenizer_xa_xb)
  with pytest.raises(UserError, match=rf"{os.path.join(folder, 'valid.xa')}, line 77: byte 0xff"):
    prepare_mono(Corpus([LocalFolder(folder)]), "xa", tok, str(tmp_path / "cache"))
  assert not any(n.endswith("manifest.json") for _, _, files in os.walk(tmp_path / "cache") for n in files)


def test_pairs_read_without_the_length_check_still_refuse_to_truncate(tmp_path, corpus_dir):
  folder = copy_folder(tmp_path / "c", corpus_dir, pairs=("xa-xb",))
  drop_last_lines(os.path.join(folder, "valid.xa-xb.xa"), 1)
  pairs = Corpus([LocalFolder(folder)]).para("valid", "xb", "xa")  # xb first: the files come back swapped
  with pytest.raises(UserError, match=r"valid\.xa-xb\.xb has 100 lines, .*valid\.xa-xb\.xa has 99"):
    list(pairs())


def test_aligned_folder_with_files_of_different_lengths(tmp_path, corpus_dir):
  folder = copy_folder(tmp_path / "m30k", corpus_dir)  # as Multi30k: {split}.{lang} translate each other
  drop_last_lines(os.path.join(folder, "train.xa"), 5)
  source = LocalFolder(folder, aligned=True)
  assert source.para_paths("train", "xa", "xb") == (os.path.join(folder, "train.xa"),
                                                    os.path.join(folder, "train.xb"))
  with pytest.raises(UserError, match=r"train\.xa has 1995 lines, .*train\.xb has 2000"):
    source.validate_para("train", "xa", "xb")


def test_empty_and_over_long_lines_are_dropped_and_counted(tmp_path, corpus_dir, tokenizer_xa_xb):
  tok = load_tokenizer(tokenizer_xa_xb)
  folder = copy_folder(tmp_path / "c", corpus_dir, pairs=("xa-xb",))
  paths = {l: os.path.join(folder, f"train.xa-xb.{l}") for l in ("xa", "xb")}
  text = {l: open(p, encoding="utf-8").read().splitlines() for l, p in paths.items()}
  max_len = max(len(tok.encode(t)) for l in text for t in text[l])  # no original pair is too long
  long_xb = " ".join(text["xb"][:12])  # far longer
  edits = {3: ("", None), 10: (None, "   "), 20: (" \t", ""),   # empty on one side, whitespace, both
           30: (None, long_xb), 40: (" ".join(text["xa"][:12]), None)}
  for i, (a, b) in edits.items():
    text["xa"][i] = text["xa"][i] if a is None else a
    text["xb"][i] = text["xb"][i] if b is None else b
  for l, p in paths.items():
    with open(p, "w", encoding="utf-8") as f:
      f.write("\n".join(text[l]) + "\n")
  mono_path = os.path.join(folder, "train.xa")
  mono_lines = open(mono_path, encoding="utf-8").read().splitlines()
  mono_lines[5] = mono_lines[6] = ""
  mono_lines[7] = " ".join(mono_lines[:40])  # monolingual lines have no length limit (streams)
  with open(mono_path, "w", encoding="utf-8") as f:
    f.write("\n".join(mono_lines) + "\n")

  corpus = Corpus([LocalFolder(folder)])
  para = prepare_para(corpus, "xb", "xa", tok, str(tmp_path / "cache"), max_len=max_len)
  split = para.manifest["splits"]["train"]
  assert split["dropped"] == {"empty": 3, "too_long": 2}
  assert split["lines"] == 1000 and split["sentences"] == 995
  kept = [i for i in range(1000) if i not in edits]
  got = para.read("train", [0, 1, 2, 3, 994])
  for (ids_a, ids_b), i in zip(got, [kept[0], kept[1], kept[2], kept[3], kept[994]]):
    assert list(ids_a) == tok.encode(text["xa"][i]) and list(ids_b) == tok.encode(text["xb"][i])
  assert para.manifest["splits"]["valid"]["dropped"] == {"empty": 0, "too_long": 0}

  mono = prepare_mono(corpus, "xa", tok, str(tmp_path / "cache"))
  split = mono.manifest["splits"]["train"]
  assert split["dropped"] == {"empty": 2, "too_long": 0} and split["sentences"] == 1998
  assert int(mono.lengths("train")[5]) == len(tok.encode(mono_lines[7]))  # the long line is kept, two lines up

  # what training reports: the dropped lines, and the pairs too long for a row (never skipped silently)
  store = PairIndex(para.store("train", 0), para.store("train", 1), max_tokens=24)
  lengths = para.lengths("train")
  assert store.n_too_long == int((lengths.sum(1) + 4 > 24).sum()) > 0
  assert len(store) + store.n_too_long == 995
  report = data_report([para, mono], {("xa", "xb", "train"): store}, 24)
  assert report == [
      f"data: pairs xa-xb, train: kept 995 of 1000 lines; dropped 3 empty and 2 longer than max_len={max_len} "
      "tokens.",
      "data: language 'xa', train: kept 1998 of 2000 lines; dropped 2 empty.",
      f"data: pairs xa-xb, train: {store.n_too_long} of 995 pairs do not fit a row of bptt=24 tokens (both "
      "sentences framed) and are skipped."]


def test_unreadable_tokenizer_paths(tmp_path):
  with pytest.raises(UserError, match=r"config\.data\.tokenizer=.*nowhere.* does not exist"):
    load_tokenizer(str(tmp_path / "nowhere"))
  bad = tmp_path / "tokenizer.json"
  bad.write_text("{not json")
  with pytest.raises(UserError, match=r"is not a saved xlm_jax tokenizer \(JSONDecodeError"):
    load_tokenizer(str(bad))
  bad.write_text(json.dumps({"kind": "sentencepiece"}))
  with pytest.raises(UserError, match=r"is not a saved xlm_jax tokenizer \(KeyError"):
    load_tokenizer(str(bad))


def test_an_empty_pair_side_is_never_packed(tmp_path):
  # a line of characters the normaliser removes encodes to no token: counted as empty, like a blank line
  from xlm_jax.data.prepare import prepare
  p = prepare("t", str(tmp_path / "cache"), {"train": lambda: iter([("a b", "c"), ("d", "zero"), ("e", "f")])},
              n_fields=2, encode=lambda t: [] if t == "zero" else [7] * len(t.split()), unk_id=3, eos_id=1,
              fingerprint={"x": 1})
  assert p.manifest["splits"]["train"]["dropped"]["empty"] == 1
  np.testing.assert_array_equal(p.lengths("train"), [[2, 1], [1, 1]])


def test_a_corpus_file_that_changes_while_it_is_prepared_is_refused(tmp_path):
  from xlm_jax.data.prepare import prepare
  path = tmp_path / "train.xa"
  path.write_text("a b\nc d\n" * 50)

  def lines():
    for i, line in enumerate(read_lines(str(path))):
      if i == 10:  # another program appends to the file meanwhile
        with open(path, "a") as f:
          f.write("e f\n")
      yield line

  with pytest.raises(UserError, match=rf"{path} changed while .* was being prepared from it"):
    prepare("t", str(tmp_path / "cache"), {"train": lines}, n_fields=1, encode=lambda t: [7] * len(t.split()),
            unk_id=3, eos_id=1, fingerprint={"x": 1}, input_files=[str(path)])
  assert not [p for p in (tmp_path / "cache").iterdir() if p.name.endswith("manifest.json")]


def test_a_one_megabyte_line(tmp_path, corpus_dir, tokenizer_xa_xb):
  """A 1 MB line: a monolingual stream keeps it whole (streams have no sentence limit, as in the reference); a
  parallel file drops the pair as too long and counts it; every other line is kept exactly."""
  tok = load_tokenizer(tokenizer_xa_xb)
  folder = copy_folder(tmp_path / "c", corpus_dir, pairs=("xa-xb",))
  mono_path = os.path.join(folder, "train.xa")
  mono_lines = open(mono_path, encoding="utf-8").read().splitlines()
  huge = " ".join(mono_lines)
  huge = (huge + " ") * (1_000_000 // (len(huge) + 1) + 1)
  huge = huge[:1_000_000].rsplit(" ", 1)[0]
  assert len(huge.encode("utf-8")) > 990_000
  mono_lines[9] = huge
  with open(mono_path, "w", encoding="utf-8") as f:
    f.write("\n".join(mono_lines) + "\n")
  pair_path = os.path.join(folder, "train.xa-xb.xb")
  pair_lines = open(pair_path, encoding="utf-8").read().splitlines()
  pair_lines[4] = huge
  with open(pair_path, "w", encoding="utf-8") as f:
    f.write("\n".join(pair_lines) + "\n")

  corpus = Corpus([LocalFolder(folder)])
  mono = prepare_mono(corpus, "xa", tok, str(tmp_path / "cache"))
  split = mono.manifest["splits"]["train"]
  assert split["sentences"] == len(mono_lines) and split["dropped"] == {"empty": 0, "too_long": 0}
  assert int(mono.lengths("train")[9]) == len(tok.encode(huge))
  assert int(mono.lengths("train")[10]) == len(tok.encode(mono_lines[10]))

  para = prepare_para(corpus, "xa", "xb", tok, str(tmp_path / "cache"), max_len=256)
  split = para.manifest["splits"]["train"]
  assert split["dropped"]["too_long"] == 1 and split["sentences"] == len(pair_lines) - 1
  report = data_report([para], {}, 256)
  assert "dropped 1 longer than max_len=256 tokens" in report[0]
