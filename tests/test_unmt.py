"""Unsupervised MT (denoising + on-the-fly back-translation, no sentence pair): the run builds, the round-trip
selection criterion."""
import pytest

from conftest import tiny_config

UNMT = {"task": "nmt", "nmt.ae_steps": "xa,xb", "nmt.bt_steps": "xa-xb-xa,xb-xa-xb", "nmt.mt_steps": "",
        "nmt.src_len": 32, "nmt.tgt_len": 32, "nmt.bt_len": 24, "nmt.bleu_sentences": 8,
        "nmt.sample_translations": 0, "train.steps": 4, "data.eval_rows": 4, "data.languages": "xa,xb",
        "init.encoder": "scratch", "init.decoder": "scratch"}


def test_unsupervised_run_builds_its_held_out_mt_sets(tmp_path):
  """No `mt` objective (only denoising and back-translation), yet held-out MT per direction: before the fix this
  raised KeyError('mt') while building the evaluation batches, so no unsupervised run could start."""
  from xlm_jax import parallel
  from xlm_jax.train import nmt
  c = tiny_config(**UNMT)
  task, _ = nmt.build_task(c, str(tmp_path), parallel.make_mesh(c.mesh.to_dict()))
  assert sorted(task.eval_sets) == ["mt_xa-xb", "mt_xb-xa"]
  batch = task.eval_sets["mt_xa-xb"][0]["mt"]
  assert batch["pred_weights"].sum() > 0 and batch["src_langs"].max() != batch["tgt_langs"].max()


def test_roundtrip_texts_are_disjoint_lines_of_each_language(corpus_dir):
  from xlm_jax.data.mixture import parse_nmt_steps
  from xlm_jax.data.sources import make_corpus
  from xlm_jax.train import nmt
  corpus = make_corpus(corpus_dir, workdir=corpus_dir, languages=["xa", "xb"], seed=0)
  specs = parse_nmt_steps("", "xa,xb", "xa-xb-xa,xb-xa-xb")
  texts = nmt.roundtrip_texts(corpus, specs, "valid", 10)
  xa = list(corpus.mono("valid", "xa")())
  xb = list(corpus.mono("valid", "xb")())
  assert texts[("xa", "xb")] == xa[:10] and texts[("xb", "xa")] == xb[10:20]
  with pytest.raises(Exception, match="roundtrip_sentences=60"):
    nmt.roundtrip_texts(corpus, specs, "valid", 60)  # 100 valid lines: 2 x 60 do not fit


def test_roundtrip_bleu_scores_the_way_back_against_the_input():
  from xlm_jax.train import nmt
  texts = {("en", "fr"): ["a small dog runs on the grass .", "two men are talking in a busy street ."]}
  assert nmt.roundtrip_bleu(lambda t, a, b: list(t), texts)["roundtrip_bleu"] == pytest.approx(100.0)
  lossy = lambda t, a, b: [" ".join(s.split()[:-2]) for s in t] if b == "fr" else list(t)  # drops words going out
  scores = nmt.roundtrip_bleu(lossy, texts)
  assert 0 < scores["roundtrip_bleu_en-fr-en"] < 100 and scores["roundtrip_bleu"] == scores["roundtrip_bleu_en-fr-en"]
