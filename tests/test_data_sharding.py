"""Multi-host data: each process builds only its own row groups and reads only the tokens they need (issue #4).

Processes are simulated in-process: `Mixture(..., process_index=i, process_count=n)` over the memory-mapped stores
every run uses, with every read of a store's token array counted. The data sits in one file per split and side,
fewer than the processes: reading is by position, never by file, so no process reads a whole file or sits idle.
(tests/test_distributed.py checks that two real processes train exactly like one.)
"""
from __future__ import annotations

import collections

import numpy as np
import pytest

from xlm_jax.data.masking import MaskingConfig
from xlm_jax.data.mixture import Entry, Mixture, mlm_targets, objectives, parse_steps
from xlm_jax.data.rows import PairIndex, StreamRows, TlmRows
from xlm_jax.data.sources import Corpus, LocalFolder
from xlm_jax.data.stores import TokenStore
from xlm_jax.tokenizer import train_sentencepiece
from xlm_jax.train.pretrain import prepare_mono, prepare_para

LANGS = ("xa", "xb")
STEPS = "xa,xb,xa-xb,xb-xa"
BATCH, GROUP, LENGTH = 16, 4, 32


class CountingTokens:
  """A store's token array that counts the positions read through it in `log`: (store, position) -> reads."""

  def __init__(self, name: str, tokens: np.ndarray, log: collections.Counter):
    self.name, self.tokens, self.log = name, tokens, log

  def __len__(self) -> int:
    return len(self.tokens)

  def __getitem__(self, at):
    self.log.update((self.name, int(i)) for i in np.asarray(np.arange(len(self.tokens))[at]).ravel())
    return self.tokens[at]


def counted(store: TokenStore, log: collections.Counter) -> TokenStore:
  return TokenStore(None, CountingTokens(store.stem, store.tokens, log), store.offsets)


@pytest.fixture(scope="module")
def prepared(corpus_dir, tmp_path_factory):
  corpus = Corpus([LocalFolder(corpus_dir)])
  tok = train_sentencepiece({l: corpus.mono("train", l) for l in LANGS}, 300, n_sentences=3000)
  cache = str(tmp_path_factory.mktemp("cache"))
  data = {l: prepare_mono(corpus, l, tok, cache) for l in LANGS}
  data["xa-xb"] = prepare_para(corpus, "xa", "xb", tok, cache, max_len=100)
  return tok, data


def process_batches(tok, data, process_index: int, process_count: int):
  """(the mixture of one process over counted stores, the read log)."""
  log = collections.Counter()
  entries, pairs = [], None
  for spec in parse_steps(STEPS, "mlm"):
    if len(spec.langs) == 1:
      lang = spec.langs[0]
      entries.append(Entry(spec, StreamRows(counted(data[lang].store("train"), log), LENGTH, LANGS.index(lang))))
    else:
      pairs = pairs or PairIndex(counted(data["xa-xb"].store("train", 0), log),
                                 counted(data["xa-xb"].store("train", 1), log), LENGTH)
      entries.append(Entry(spec, TlmRows(pairs, swap=spec.langs[0] != "xa", lang1=LANGS.index(spec.langs[0]),
                                         lang2=LANGS.index(spec.langs[1]), length=LENGTH, pad_id=tok.pad_id)))
  mlm = mlm_targets(MaskingConfig(tok.vocab_size, tok.mask_id, tuple(range(6))), LENGTH)
  batches = Mixture(objectives(entries, {"mlm": mlm, "tlm": mlm}, -1.0), batch_size=BATCH, group_rows=GROUP,
                    seed=11, process_index=process_index, process_count=process_count)
  return batches, log


def reads_of_step(tok, data, step: int, process_count: int):
  """Per process: (its batch of `step`, the token positions it read to build it)."""
  out = []
  for i in range(process_count):
    batches, log = process_batches(tok, data, i, process_count)
    assert not log, "the stores must not read tokens up front"
    batch = batches.batch(step)
    out.append((batch, collections.Counter(log)))
  return out


@pytest.mark.parametrize("process_count", [2, 4])
def test_each_process_reads_only_its_rows_tokens(prepared, process_count):
  tok, data = prepared
  for step in (0, 5):
    (whole, everything), = reads_of_step(tok, data, step, 1)
    parts = reads_of_step(tok, data, step, process_count)
    # together the processes read exactly what one process reads for the whole batch: nothing twice, no gap
    assert sum((log for _, log in parts), collections.Counter()) == everything
    for _, log in parts:
      assert log and set(log) < set(everything)          # a strict share of the tokens
      # each process reads a stream and the pairs although each sits in one file: rows, not files, are divided
      names = {name.rsplit("/", 1)[0] for name, _ in log}
      assert any("para.xa-xb" in n for n in names) and any("mono." in n for n in names)
    # and their rows are the global batch: 1 process and n processes together give the same global batch
    for key in whole:
      for field in whole[key]:
        np.testing.assert_array_equal(np.concatenate([b[key][field] for b, _ in parts]), whole[key][field])


def test_a_process_reads_what_its_groups_read(prepared):
  # the reads follow the row groups a process owns: process 0 of 2 owns the groups of processes 0 and 1 of 4
  tok, data = prepared
  two = reads_of_step(tok, data, 3, 2)
  four = reads_of_step(tok, data, 3, 4)
  assert two[0][1] == four[0][1] + four[1][1]
  assert two[1][1] == four[2][1] + four[3][1]
