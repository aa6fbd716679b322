"""The NMT trainer: seeding from a pretraining bundle, training, BLEU, translation, and bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, run_main, tiny_config
from xlm_jax.config_base import override
from xlm_jax.errors import UserError

NMT = {"task": "nmt", "nmt.mt_steps": "xa-xb,xb-xa", "nmt.src_len": 32, "nmt.tgt_len": 32, "nmt.bt_len": 24,
       "nmt.bleu_sentences": 8, "nmt.sample_translations": 0, "train.steps": 4, "data.eval_rows": 4}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
  """A tiny MLM+TLM pretraining run (the bundle NMT starts from)."""
  workdir = tmp_path_factory.mktemp("pre")
  proc = run_main(str(workdir), {"train.steps": 6, "data.mlm_steps": "xa,xb,xa-xb"})
  assert proc.returncode == 0, proc.stderr[-2000:]
  return str(workdir)


def nmt_config(bundle, **overrides):
  c = tiny_config(**{k: v for k, v in NMT.items()})
  c.init.bundle = bundle
  override(c, overrides)
  return c


def initial_params(config, workdir):
  from xlm_jax import parallel
  from xlm_jax.train import nmt
  from xlm_jax.train.optim import make_optimizer
  from xlm_jax.train.state import sharded_state_layout
  mesh = parallel.make_mesh(config.mesh.to_dict())
  task, _ = nmt.build_task(config, workdir, mesh)
  tx, _ = make_optimizer(config.train)
  create, _, _ = sharded_state_layout(task.init_params, tx, config.seed, mesh,
                                      parallel.rules_from_config(config.mesh.rules))
  fresh = create().params
  return fresh, task.init_from(fresh)


@pytest.mark.parametrize("encoder, decoder", [("pretrained", "pretrained"), ("pretrained", "scratch"),
                                              ("scratch", "pretrained"), ("scratch", "scratch")])
def test_initialisation_loads_exactly_the_requested_parts(bundle, tmp_path, encoder, decoder):
  import xlm_jax
  pre = xlm_jax.load(bundle).params
  config = nmt_config(bundle, **{"init.encoder": encoder, "init.decoder": decoder})
  fresh, seeded = initial_params(config, str(tmp_path))
  same = lambda a, b: np.array_equal(np.asarray(a), np.asarray(b))
  for part, how in (("encoder", encoder), ("decoder", decoder)):
    emb = seeded[part]["embeddings"]["embedding"]
    q = seeded[part]["layers_1"]["attention"]["q_lin"]["kernel"]
    assert same(emb, pre["embeddings"]["embedding"]) == (how == "pretrained")
    assert same(q, pre["layers_1"]["attention"]["q_lin"]["kernel"]) == (how == "pretrained")
    assert same(seeded[part]["pred_bias"], pre["pred_bias"]) == (how == "pretrained")
  assert same(seeded["decoder"]["layers_0"]["encoder_attn"]["k_lin"]["kernel"],
              fresh["decoder"]["layers_0"]["encoder_attn"]["k_lin"]["kernel"])  # always fresh
  table = (tmp_path / "init_table.txt").read_text()
  assert "fresh    decoder/layers_0/encoder_attn/q_lin/kernel" in table
  assert ("loaded   encoder/embeddings/embedding" in table) == (encoder == "pretrained")


def test_training_bleu_translation_and_bundle(bundle, tmp_path):
  workdir = tmp_path / "nmt"
  proc = run_main(str(workdir), {**NMT, "init.bundle": bundle, "log.every": 2})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "initialisation:" in proc.stdout
  import xlm_jax
  b = xlm_jax.load(str(workdir))
  assert b.architecture == "encoder_decoder" and b.meta["task"] == "nmt"
  assert b.meta["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
  assert {"bleu_xa-xb", "bleu_xb-xa", "tokenized_bleu_xa-xb"} <= set(b.meta["metrics"])
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert any("bleu_xa-xb" in r for r in records if r["kind"] == "eval")
  out = b.translate(["Bogu rin delans wogi.", "", "Ka delan?"], src="xa", tgt="xb", beam=2)
  assert len(out) == 3 and out[1] == ""

  lines = "Bogu rin delans wogi.\n\n   \nKa delan daluta lanpun?\nBogu.\n"
  cli = subprocess.run([sys.executable, "-m", "xlm_jax.translate", "--checkpoint", str(workdir), "--src", "xa",
                        "--tgt", "xb", "--beam", "2"], input=lines.encode(), capture_output=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)
  assert cli.returncode == 0, cli.stderr.decode()[-2000:]
  got = cli.stdout.decode().split("\n")
  assert len(got) == 6 and got[-1] == "" and got[1] == "" and got[2] == ""
  assert [got[0], got[3], got[4]] == b.translate([lines.split("\n")[i] for i in (0, 3, 4)], src="xa", tgt="xb", beam=2)

  # an independent check of the decode path itself: greedy decoding (KV cache, one token at a time) agrees with the
  # training forward (the whole target at once, no cache): teacher-forcing its own output, the full-sequence model
  # picks the same next token at every position. `block_eos` makes every sentence run to its length cap (a word at
  # each position, so the check is never vacuous); pad and `</s>` are excluded there, the final forced `</s>` is not
  # checked.
  from xlm_jax import decode as decode_lib
  from xlm_jax.model import EncoderDecoder
  src = b.encode(["Bogu rin delans wogi.", "Ka delan daluta lanpun?"], lang="xa")
  xa, xb = b.languages.index("xa"), b.languages.index("xb")
  tok = b.tokenizer
  greedy = decode_lib.generate(b.params, b.model_config, b.decoder_config, src, np.full(len(src), xa),
                               np.full(len(src), xb), eos_id=tok.eos_id, pad_id=tok.pad_id, beam_size=1,
                               block_eos=True)
  model = EncoderDecoder(b.model_config, b.decoder_config)
  for i in range(len(src)):
    n = int(greedy.lengths[i])
    y = np.asarray(greedy.tokens[i, :n])[None]
    s_row = src[i:i + 1]
    logits = np.array(model.apply({"params": b.params}, s_row, None, np.full(s_row.shape, xa),
                                   (s_row != tok.pad_id).astype(np.int32), y, None, np.full(y.shape, xb),
                                   np.ones(y.shape, np.int32)))
    logits[..., [tok.pad_id, tok.eos_id]] = -np.inf
    assert n >= 4 and list(np.argmax(logits[0, :n - 2], -1)) == list(y[0, 1:n - 1]), i

  bad = subprocess.run([sys.executable, "-m", "xlm_jax.translate", "--checkpoint", str(workdir), "--src", "xa",
                        "--tgt", "xb"], input=b"ok line\n\xff\xfe broken\n", capture_output=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)
  assert bad.returncode == 2 and b"line 2" in bad.stderr and b"UTF-8" in bad.stderr
  empty = subprocess.run([sys.executable, "-m", "xlm_jax.translate", "--checkpoint", str(workdir), "--src", "xa",
                          "--tgt", "xb"], input=b"", capture_output=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)
  assert empty.returncode == 2 and b"empty" in empty.stderr


def test_language_pair_absent_from_the_data(bundle, tmp_path, corpus_dir):
  import shutil
  folder = tmp_path / "corpus"
  folder.mkdir()
  for name in os.listdir(corpus_dir):
    if not name.endswith(".json") and ("xa-xc" not in name):
      shutil.copy(os.path.join(corpus_dir, name), folder / name)
  config = nmt_config(bundle, **{"nmt.mt_steps": "xa-xc", "data.corpus": str(folder)})
  with pytest.raises(UserError, match="no parallel data for xa-xc"):
    initial_params(config, str(tmp_path / "w"))
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_bad_step_specs_and_languages(bundle, tmp_path):
  from xlm_jax.data.mixture import parse_nmt_steps
  with pytest.raises(UserError, match="l1-l2-l1"):
    parse_nmt_steps("", "", "xa-xb-xc")
  with pytest.raises(UserError, match="'en-fr-en'"):
    parse_nmt_steps("", "", "xa-xb")
  with pytest.raises(UserError, match="'zz'"):
    initial_params(nmt_config(bundle, **{"nmt.mt_steps": "xa-zz"}), str(tmp_path))


def test_mismatched_bundles_are_refused(bundle, tmp_path):
  other = tmp_path / "other"
  proc = run_main(str(other), {"train.steps": 2, "data.vocab_size": 280, "data.mlm_steps": "xa,xb"})
  assert proc.returncode == 0, proc.stderr[-2000:]
  with pytest.raises(UserError, match="do not match.*tokenizers differ.*vocab_size"):
    initial_params(nmt_config(bundle, **{"init.decoder_bundle": str(other)}), str(tmp_path / "w"))


@pytest.mark.parametrize("field", ["src_len", "tgt_len", "bt_len"])
def test_lengths_beyond_the_position_table_are_refused(bundle, tmp_path, field):
  """Defect 5: past the position table `jnp.take` gave silent NaNs; now one sentence naming the field, before any
  checkpoint is written."""
  import xlm_jax
  table = xlm_jax.load(bundle).model_config.max_positions
  overrides = {"nmt.src_len": table + 8, "nmt.tgt_len": table + 8, "nmt.bt_len": table + 8, "nmt.bt_steps": "xa-xb-xa"}
  overrides = {k: v for k, v in overrides.items() if k.endswith(field) or k == "nmt.bt_steps"}
  with pytest.raises(UserError, match=f"config.nmt.{field}={table + 8} exceeds the model's max_positions={table}"):
    initial_params(nmt_config(bundle, **overrides), str(tmp_path / "w"))
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_batch_not_divisible_into_micro_batches_is_refused(bundle, tmp_path):
  """Defect 5: the divisibility check pretraining has (devices x accumulate_gradients)."""
  with pytest.raises(UserError, match="batch_size=8 is not divisible by 3"):
    initial_params(nmt_config(bundle, **{"train.accumulate_gradients": 3}), str(tmp_path / "w"))


def test_nmt_resume_continues_like_an_uninterrupted_run(bundle, tmp_path):
  """MT + denoising (with noise) + dropout: 2 steps, then the same command to 4, equals 4 straight steps (Adam
  moments, the step key and the data position are restored)."""
  import jax
  from xlm_jax.train import nmt
  config = lambda steps: nmt_config(bundle, **{"train.steps": steps, "checkpoint.every": 2, "nmt.bleu_sentences": 2,
                                               "nmt.ae_steps": "xa", "nmt.word_shuffle": 3.0,
                                               "nmt.word_dropout": 0.1, "nmt.word_blank": 0.1})
  straight = nmt.run(config(4), str(tmp_path / "straight")).state
  nmt.run(config(2), str(tmp_path / "resumed"))
  resumed = nmt.run(config(4), str(tmp_path / "resumed")).state
  assert int(straight.step) == int(resumed.step) == 4
  diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                                       straight.params, resumed.params))
  assert max(diffs) <= 1e-6


def test_bleu_scores_both_ways_without_warning_that_its_own_tokenized_text_looks_tokenized(caplog):
  """The tokenized BLEU (2019 papers' figure) scores Moses-tokenized text on purpose; sacreBLEU must not print, on
  every evaluation, that the data looks tokenized."""
  import logging
  from xlm_jax.evaluate import bleu
  hyps = ["The cat sat on the mat.", "A dog runs in the park."] * 60
  refs = ["The cat sat on the mat.", "A dog ran in the park."] * 60
  with caplog.at_level(logging.WARNING):
    out = bleu(hyps, refs, "en")
  assert 0 < out["bleu"] < 100 and 0 < out["tokenized_bleu"] < 100
  assert not [r for r in caplog.records if "tokenized" in r.getMessage()], [r.getMessage() for r in caplog.records]
