"""Prepared stores, streams and pretraining batches: layout, determinism, process sharding, workers, resume."""
import os

import numpy as np
import pytest

from xlm_jax.data.loader import Loader
from xlm_jax.data.masking import MaskingConfig
from xlm_jax.data.mixture import (Entry, Mixture, NextTokenTargets, batch_checksum, mlm_targets, objectives,
                                  parse_steps, sampling_probs)
from xlm_jax.data.rows import StreamRows
from xlm_jax.data.sources import Corpus, LocalFolder
from xlm_jax.errors import UserError
from xlm_jax.tokenizer import train_sentencepiece
from xlm_jax.train.pretrain import prepare_mono

LANGS = ("xa", "xb", "xc")


@pytest.fixture(scope="module")
def setup(corpus_dir, tmp_path_factory):
  source = Corpus([LocalFolder(corpus_dir)])
  tok = train_sentencepiece({l: source.mono("train", l) for l in LANGS}, 300, n_sentences=3000)
  cache = str(tmp_path_factory.mktemp("cache"))
  prepared = {l: prepare_mono(source, l, tok, cache) for l in LANGS}
  return source, tok, cache, prepared


def make_batches(prepared, tok, process_index=0, process_count=1, mixing="shared", steps="xa,xb,xc", clm=""):
  specs = parse_steps(steps, "mlm") + parse_steps(clm, "clm")
  entries = []
  for spec in specs:
    lang = spec.langs[0]
    if lang not in prepared:
      raise UserError(f"no data for {lang!r}")
    entries.append(Entry(spec, StreamRows(prepared[lang].store("train"), 32, LANGS.index(lang))))
  mlm = mlm_targets(MaskingConfig(tok.vocab_size, tok.mask_id, tuple(range(6))), 32)
  return Mixture(objectives(entries, {"mlm": mlm, "clm": NextTokenTargets()}, -1.0), batch_size=8, seed=3,
                 mixing=mixing, process_index=process_index, process_count=process_count, group_rows=4)


def test_prepare_manifest_and_cache(setup, corpus_dir):
  source, tok, cache, prepared = setup
  p = prepared["xa"]
  split = p.manifest["splits"]["train"]
  assert split["sentences"] + sum(split["dropped"].values()) == split["lines"] == 2000
  assert p.manifest["fingerprint"]["tokenizer"] == tok.fingerprint()
  lines = open(os.path.join(corpus_dir, "train.xa"), encoding="utf-8").read().splitlines()
  first = p.read("train", [0, 5])
  assert list(first[1]) == tok.encode(lines[5])
  assert int(p.lengths("train")[5]) == len(tok.encode(lines[5]))
  again = prepare_mono(source, "xa", tok, cache)
  assert again.path == p.path  # reused, not rebuilt
  stores = p.manifest["stores"]["train"]
  assert stores[0]["sentences"] == split["sentences"] and len(stores[0]["tokens"]["blake2b"]) == 32


def test_a_damaged_store_is_prepared_again_with_a_notice(setup, tmp_path, capsys):
  source, tok, _, _ = setup
  cache = str(tmp_path)
  p = prepare_mono(source, "xc", tok, cache)
  before = p.read("train", [3])[0]
  tokens = os.path.join(p.path, "train.0.tokens.i32")
  with open(tokens, "r+b") as f:  # same size, other bytes: only the checksum can tell
    f.seek(40)
    f.write(b"\xff\xff\xff\x7f")
  again = prepare_mono(source, "xc", tok, cache)
  notice = capsys.readouterr().out
  assert "train.0.tokens.i32 does not match its manifest checksum; preparing it again" in notice
  np.testing.assert_array_equal(again.read("train", [3])[0], before)
  with open(tokens, "ab") as f:  # a truncated or extended file: the size tells
    f.write(b"\0\0\0\0")
  size = os.path.getsize(tokens)
  prepare_mono(source, "xc", tok, cache)
  assert f"train.0.tokens.i32 has {size} bytes, its manifest says {size - 4}" in capsys.readouterr().out


def test_stream_rows_follow_the_reference_layout(setup, corpus_dir):
  _, tok, _, prepared = setup
  stream = StreamRows(prepared["xb"].store("train"), 32, 1)
  lines = open(os.path.join(corpus_dir, "train.xb"), encoding="utf-8").read().splitlines()
  expected = [tok.eos_id]
  for line in lines[:10]:
    expected += tok.encode(line) + [tok.eos_id]
  rows = stream.eval_rows(2)
  np.testing.assert_array_equal(rows["tokens"].ravel()[:64], expected[:64])
  assert np.all(rows["langs"] == 1) and np.all(rows["segment_ids"] == 1)
  np.testing.assert_array_equal(rows["positions"][1], np.arange(32))


def test_batches_are_deterministic_and_shaped(setup):
  _, tok, _, prepared = setup
  b = make_batches(prepared, tok, clm="xa")
  first, again, other = b.batch(5), b.batch(5), b.batch(6)
  assert batch_checksum(first) == batch_checksum(again) != batch_checksum(other)
  mlm = first["mlm"]
  assert mlm["tokens"].shape == (8, 32) and mlm["pred_index"].shape == (8, 5)
  assert set(first) == {"mlm", "clm"}
  assert np.all(first["clm"]["langs"] == 0)
  assert (mlm["tokens"] == tok.mask_id).sum() > 0
  np.testing.assert_array_equal(mlm["positions"][0], np.arange(32))


def test_process_shards_concatenate_to_the_global_batch(setup):
  _, tok, _, prepared = setup
  whole = make_batches(prepared, tok).batch(9)["mlm"]
  halves = [make_batches(prepared, tok, i, 2).batch(9)["mlm"] for i in range(2)]
  for key in whole:
    np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])


def test_separate_mixing_takes_turns_with_one_language_per_step(setup):
  _, tok, _, prepared = setup
  b = make_batches(prepared, tok, mixing="separate", clm="xa,xb")
  kinds = [next(iter(b.batch(s))) for s in range(4)]
  assert kinds == ["clm", "mlm", "clm", "mlm"]
  for s in range(6):
    (obj, fields), = b.batch(s).items()
    assert len(np.unique(fields["langs"])) == 1


def test_loader_resumes_at_the_exact_batch_and_workers_do_not_change_batches(setup):
  _, tok, _, prepared = setup
  b = make_batches(prepared, tok, clm="xa")
  direct = [batch_checksum(b.batch(s)) for s in range(6)]
  for workers, chunk in ((0, 1), (1, 3), (2, 8)):  # steps per Grain element do not change the batches either
    it = Loader(b, 0, 6, workers=workers, steps_per_element=chunk)
    seq = [batch_checksum(next(it)[1]) for _ in range(4)]
    state = it.state()
    it.close()
    assert seq == direct[:4], f"{workers} workers, {chunk} steps per element"
    assert state["next_step"] == 4
  it = Loader(b, 3, 6, workers=2, steps_per_element=2)  # resumed at step 3: chunks (3, 4) and (5,)
  assert [(step, batch_checksum(local)) for step, local, _ in it] == list(enumerate(direct, 0))[3:]
  it.close()


class Failing:
  size = 10

  def rows(self, rng, n):
    raise ValueError("a broken row builder")


def test_a_failing_worker_ends_the_run_with_its_error_and_step():
  from xlm_jax.data.mixture import BuiltIn, StepSpec
  b = Mixture(objectives([Entry(StepSpec("mt", ("xa", "xb")), Failing())], {"mt": BuiltIn()}, -1.0),
              batch_size=4, seed=0, group_rows=4)
  it = Loader(b, 7, 20, workers=1)
  with pytest.raises(Exception, match=r"step 7.*ValueError: a broken row builder"):
    next(it)
  it.close()


def test_step_specs_and_sampling():
  specs = parse_steps("en, fr,en-fr", "mlm")
  assert [s.langs for s in specs] == [("en",), ("fr",), ("en", "fr")]
  with pytest.raises(UserError, match="neither"):
    parse_steps("en-en", "mlm")
  np.testing.assert_allclose(sampling_probs([100, 1], -1), [0.5, 0.5])
  p = sampling_probs([100, 1], 0.5)
  assert p[0] / p[1] == pytest.approx(10)


def test_unknown_step_language_is_refused(tmp_path):
  """The check of the run set-up itself (this file's `make_batches` helper has its own, which proves nothing)."""
  from conftest import tiny_config
  from xlm_jax import parallel
  from xlm_jax.train import pretrain
  config = tiny_config(**{"data.mlm_steps": "xa,zz"})
  with pytest.raises(UserError, match="mlm_steps names language 'zz', which is not in config.data.languages"):
    pretrain.build_task(config, str(tmp_path), parallel.make_mesh(config.mesh.to_dict()))
  assert not os.listdir(tmp_path)


def test_frequency_smoothed_masking_scores_come_from_the_training_data(setup):
  import dataclasses
  from xlm_jax.data.masking import frequency_scores
  from xlm_jax.train.pretrain import masking_scores
  _, tok, _, prepared = setup
  masking = MaskingConfig(tok.vocab_size, tok.mask_id, tuple(range(6)))
  assert masking_scores(masking, [prepared["xa"]]) is None  # sample_alpha == 0: uniform masking
  counts = prepared["xa"].token_counts("train", tok.vocab_size)
  expected = np.bincount(np.concatenate(prepared["xa"].read_all("train")), minlength=tok.vocab_size)
  np.testing.assert_array_equal(counts, expected)
  assert os.path.exists(os.path.join(prepared["xa"].path, "counts.train.npy"))  # counted while preparing
  smoothed = dataclasses.replace(masking, sample_alpha=0.5)
  scores = masking_scores(smoothed, [prepared["xa"], prepared["xb"]])
  both = expected + prepared["xb"].token_counts("train", tok.vocab_size)
  np.testing.assert_allclose(scores, frequency_scores(both, 0.5, range(6)))
  assert np.all(scores[:6] == 0) and scores[6:].min() > 0


def test_preparation_in_parallel_processes_writes_the_same_stores(setup, tmp_path):
  """Two spawned workers (not forked: no warning that fork after JAX's threads may deadlock) write the stores one
  process writes; the encoders reach them pickled as the tokenizer's state."""
  import pickle
  import warnings
  from xlm_jax.data import prepare as prepare_lib
  from xlm_jax.tokenizer import LanguageEncoder
  source, tok, _, prepared = setup
  one = prepared["xb"].manifest["stores"]
  chunk = prepare_lib.CHUNK_LINES
  prepare_lib.CHUNK_LINES = 300  # several chunks per worker on the small corpus
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", RuntimeWarning)
      two = prepare_mono(source, "xb", tok, str(tmp_path), workers=2).manifest["stores"]
  finally:
    prepare_lib.CHUNK_LINES = chunk
  assert two == one
  copy = pickle.loads(pickle.dumps(LanguageEncoder(tok, "xb")))
  assert copy.tokenizer is not tok and copy("Bogu rin delans wogi.") == tok.encode("Bogu rin delans wogi.", "xb")
  with pytest.raises(UserError, match=r"workers=2 .*cannot be pickled.*LanguageEncoder.*prepare_workers=1"):
    list(prepare_lib._encoded(["a line"], [lambda t: tok.encode(t, "xb")], 2))


def test_a_damaged_store_whose_inputs_are_gone_is_refused_naming_the_file(setup, corpus_dir, tmp_path):
  import shutil
  _, tok, _, _ = setup
  folder = tmp_path / "corpus"
  folder.mkdir()
  for split in ("train", "valid"):
    shutil.copy(os.path.join(corpus_dir, f"{split}.xc"), folder / f"{split}.xc")
  source = Corpus([LocalFolder(str(folder))])
  p = prepare_mono(source, "xc", tok, str(tmp_path / "cache"))
  with open(os.path.join(p.path, "train.0.offsets.i64"), "r+b") as f:
    f.write(b"\xff" * 8)
  os.remove(folder / "train.xc")
  with pytest.raises(UserError, match=r"train\.xc"):
    prepare_mono(source, "xc", tok, str(tmp_path / "cache"))
