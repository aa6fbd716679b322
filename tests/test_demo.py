"""The demo end to end (short form in CI; XLM_JAX_FULL_TESTS=1 runs the full demo config) and `xlm_jax.load`."""
import json
import re

import numpy as np
import pytest

from conftest import FULL, run_main


def test_tlm_directions_follow_the_trained_pairs():
  from xlm_jax.demo import tlm_directions
  assert tlm_directions("xa,xb,xc,xa-xb,xb-xa", ["xa", "xb", "xc"]) == [("xa", "xb"), ("xb", "xa")]
  assert tlm_directions("xa,xb", ["xa", "xb"]) == [("xa", "xb"), ("xb", "xa")]  # no TLM: every ordered pair
  assert len(tlm_directions("", ["xa", "xb", "xc"])) == 6


@pytest.mark.slow
def test_demo_runs_reports_and_leaves_a_loadable_bundle(tmp_path):
  workdir = tmp_path / "demo"
  short = {} if FULL else {"train.steps": 60, "log.every": 20, "checkpoint.every": 30, "data.eval_rows": 32,
                           "demo.nmt_steps": 20, "demo.nmt_batch_size": 8, "nmt.bleu_sentences": 16, "nmt.src_len": 32,
                           "nmt.tgt_len": 32}
  proc = run_main(str(workdir), {**short, "task": "demo"}, timeout=900, tiny=not FULL)
  assert proc.returncode == 0, proc.stderr[-3000:]
  match = re.search(r"held-out MLM perplexity ([0-9.]+), accuracy ([0-9.]+)", proc.stdout)
  assert match, proc.stdout
  ppl, acc = float(match.group(1)), float(match.group(2))
  # Better than guessing uniformly over the vocabulary (300 in the short form, 1000 in the demo config), which is
  # where an untrained model starts; the short form stops long before the unigram baseline, the full demo must
  # reach twice it (issue #12's bar, checked on the summary below).
  vocab = 1000 if FULL else 300
  assert 1.0 < ppl < vocab and 0.0 <= acc <= 1.0
  bleu = re.findall(r"held-out BLEU (xa-xb|xb-xa): ([0-9.]+)", proc.stdout)
  assert sorted(d for d, _ in bleu) == ["xa-xb", "xb-xa"], proc.stdout
  if FULL:
    assert min(float(v) for _, v in bleu) > 20.0
  figures = json.load(open(workdir / "demo.json"))
  s = figures["summary"]
  assert sorted(figures["mlm"]) == ["xa", "xb", "xc"] and sorted(figures["tlm"]) == ["xa_given_xb", "xb_given_xa"]
  assert 0.0 <= s["unigram_acc"] <= 1.0 and s["unigram_ppl"] > 1.0 and figures["mlm"]["xa"]["n_masked"] > 0
  if FULL:
    assert s["mlm_acc"] >= 2 * s["unigram_acc"], s
    assert s["tlm_with_translation_acc"] > s["tlm_without_translation_acc"], s
  assert re.search(r"held-out MLM accuracy [0-9.]+ vs unigram baseline [0-9.]+", proc.stdout), proc.stdout
  assert all(len(f) >= 1 and f[0]["masked"].count("<mask>") == 1 for f in figures["fill_ins"].values())
  assert 0 <= s["tlm_pairs_skipped"] and all(0.0 <= t["with_context_acc"] <= 1.0 for t in figures["tlm"].values())
  pre = workdir / "pretrain"
  assert (pre / "metrics.jsonl").exists()
  assert list((pre / "tensorboard").glob("events.out.tfevents.*"))

  import xlm_jax
  out = xlm_jax.load(str(workdir / "nmt")).translate(["Bogu rin delans wogi."], src="xa", tgt="xb")
  assert len(out) == 1 and isinstance(out[0], str)
  bundle = xlm_jax.load(str(pre))
  assert bundle.languages == ["xa", "xb", "xc"]
  assert bundle.tokenizer.pad_id == 2 and bundle.tokenizer.eos_id == 1 and bundle.tokenizer.mask_id == 5
  ids = bundle.encode(["Bogu rin delans wogi.", "Ka delan?"], lang="xa")
  assert ids.dtype == np.int32 and ids[0, 0] == 1 and ids[1, -1] == 2
  h = bundle.hidden_states(ids, langs="xa")
  z = bundle.logits(ids, langs=np.zeros(ids.shape, np.int32))
  assert h.shape == ids.shape + (bundle.model_config.emb_dim,) and h.dtype == np.float32
  assert z.shape == ids.shape + (bundle.model_config.vocab_size,)
  assert np.all(h[1, ids[1] == 2] == 0)
