"""Multi-host data: each process reads only the records its own rows need (issue #4).

Processes are simulated in-process: `PretrainBatches(..., process_index=i, process_count=n)` over the lazy stores
that multi-process runs use (`TokenStream(in_memory_max_tokens=0)`, `PairStore(in_memory=False)`), with every
`PreparedText.read` counted. The data sits in one ArrayRecord file per split (one shard), fewer than the
processes: reading is by record, never by shard, so no process reads a whole file or sits idle.
(tests/test_distributed.py checks that two real processes train exactly like one.)
"""
from __future__ import annotations

import collections
import glob
import os

import numpy as np
import pytest

from xlm_jax.data.masking import MaskingConfig
from xlm_jax.data.packing import PairDirection, PairStore
from xlm_jax.data.pipeline import Entry, PackedPairRows, PretrainBatches, StreamRows, parse_steps
from xlm_jax.data.prepare import PreparedText
from xlm_jax.data.sources import Corpus, LocalFolder
from xlm_jax.data.streams import TokenStream
from xlm_jax.tokenizer import train_sentencepiece
from xlm_jax.train.pretrain import prepare_mono, prepare_para

LANGS = ("xa", "xb")
STEPS = "xa,xb,xa-xb,xb-xa"
BATCH, GROUP, LENGTH = 16, 4, 32


class CountingText(PreparedText):
  """A prepared dataset that counts every record read through it in `log`: (dataset, split, index) -> reads."""

  def __init__(self, data: PreparedText, log: collections.Counter):
    super().__init__(data.path, data.n_fields, data.manifest)
    self.log = log

  def read(self, split, indices):
    self.log.update((self.manifest["name"], split, int(i)) for i in indices)
    return super().read(split, indices)


@pytest.fixture(scope="module")
def prepared(corpus_dir, tmp_path_factory):
  corpus = Corpus([LocalFolder(corpus_dir)])
  tok = train_sentencepiece({l: corpus.mono("train", l) for l in LANGS}, 300, n_sentences=3000)
  cache = str(tmp_path_factory.mktemp("cache"))
  data = {l: prepare_mono(corpus, l, tok, cache) for l in LANGS}
  data["xa-xb"] = prepare_para(corpus, "xa", "xb", tok, cache, max_len=100)
  return tok, data


def process_batches(tok, data, process_index: int, process_count: int):
  """(batches of one process over lazy, counted stores, the read log)."""
  log = collections.Counter()
  counted = {name: CountingText(d, log) for name, d in data.items()}
  entries, store = [], None
  for spec in parse_steps(STEPS, "mlm"):
    if len(spec.langs) == 1:
      lang = spec.langs[0]
      stream = TokenStream(counted[lang], "train", LENGTH, tok.eos_id, in_memory_max_tokens=0)
      size = data[lang].manifest["splits"]["train"]["sentences"]
      entries.append(Entry(spec, StreamRows(stream, LANGS.index(lang), size)))
    else:
      store = store or PairStore(counted["xa-xb"], "train", LENGTH, in_memory=False)
      direction = PairDirection(store, swap=spec.langs[0] != "xa", lang1=LANGS.index(spec.langs[0]),
                                lang2=LANGS.index(spec.langs[1]), eos_id=tok.eos_id)
      entries.append(Entry(spec, PackedPairRows(direction, LENGTH, tok.pad_id)))
  batches = PretrainBatches(entries=entries, batch_size=BATCH, seq_len=LENGTH, group_rows=GROUP,
                            masking=MaskingConfig(tok.vocab_size, tok.mask_id, 6), seed=11,
                            process_index=process_index, process_count=process_count)
  return batches, log


def reads_of_step(tok, data, step: int, process_count: int):
  """Per process: (its batch of `step`, the records it read to build it)."""
  out = []
  for i in range(process_count):
    batches, log = process_batches(tok, data, i, process_count)
    assert not log, "lazy stores must not read anything up front"
    batch = batches.batch(step)
    out.append((batch, collections.Counter(log)))
  return out


def test_the_data_sits_in_fewer_shards_than_processes(prepared):
  _, data = prepared
  for name, d in data.items():
    shards = glob.glob(os.path.join(d.path, "**", "*-train.array_record-*"), recursive=True)
    assert len(shards) == 1, (name, shards)


@pytest.mark.parametrize("process_count", [2, 4])
def test_each_process_reads_only_its_rows_records(prepared, process_count):
  tok, data = prepared
  for step in (0, 5):
    (whole, everything), = reads_of_step(tok, data, step, 1)
    parts = reads_of_step(tok, data, step, process_count)
    # together the processes read exactly what one process reads for the whole batch: nothing twice, no gap
    assert sum((log for _, log in parts), collections.Counter()) == everything
    for _, log in parts:
      assert log and set(log) < set(everything)          # a strict share of the records
      assert all(everything[k] >= n for k, n in log.items())
      # each process reads a stream and the pairs although each sits in one file: rows, not files, are divided
      names = {name for name, _, _ in log}
      assert "para.xa-xb" in names and names & {"mono.xa", "mono.xb"}
    # and their rows are the global batch
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
