"""A run a person can see into: config.json, TensorBoard scalars + hparams + text read back with TensorBoard's own
reader, a profile of the configured steps, a quiet start-up, `--print_config`, `xlm-jax report`, and the API the
evaluation notebook uses (metrics reader, embed, all-layer hidden states, TLM fill-ins, readable repr, bucketing).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT


def _events(run_dir):
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0})
  acc.Reload()
  return acc


def test_config_json_and_tensorboard_read_back(tiny_demo):
  workdir, _ = tiny_demo
  pre, nmt = workdir / "pretrain", workdir / "nmt"
  config = json.load(open(pre / "config.json"))
  assert config["task"] == "pretrain" and config["train"]["steps"] == 20 and config["model"]["emb_dim"] == 32

  acc = _events(pre)
  tags = acc.Tags()
  for tag in ("train/loss", "train/lr", "train/mlm_acc", "train/tokens_per_sec", "eval/mlm_xa/mlm_acc",
              "eval/tlm_xa-xb/tlm_acc"):
    assert tag in tags["scalars"], (tag, tags["scalars"])
  assert [e.step for e in acc.Scalars("eval/mlm_xa/mlm_acc")] == [10, 20]

  from tensorboard.plugins.hparams import plugin_data_pb2
  start = acc.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
  hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
  assert hparams["train.steps"].number_value == 20
  assert hparams["data.mlm_steps"].string_value == config["data"]["mlm_steps"]
  assert hparams["run.parameters"].number_value > 0

  from tensorboard.util import tensor_util
  text_tags = [t for t in tags["tensors"] if t.startswith("eval/fill_in_")]
  assert sorted(text_tags) == ["eval/fill_in_xa/text_summary", "eval/fill_in_xb/text_summary",
                               "eval/fill_in_xc/text_summary"], tags["tensors"]
  sample = tensor_util.make_ndarray(acc.Tensors("eval/fill_in_xa/text_summary")[-1].tensor_proto).item().decode()
  assert "<mask>" in sample and "answer:" in sample and "model:" in sample

  nmt_acc = _events(nmt)
  assert "eval/bleu_xa-xb" in nmt_acc.Tags()["scalars"]
  translation = tensor_util.make_ndarray(
      nmt_acc.Tensors("eval/samples_xa-xb/text_summary")[-1].tensor_proto).item().decode()
  assert "src:" in translation and "hyp:" in translation and "ref:" in translation

  traces = [f for _, _, files in os.walk(pre / "profile") for f in files if f.endswith(".xplane.pb")]
  assert traces, "config.log.profile_steps wrote no trace"
  assert not (nmt / "profile").exists()  # 10 NMT steps never reach step 12


def test_start_up_is_quiet_and_print_config(tiny_demo):
  _, proc = tiny_demo
  output = proc.stdout + proc.stderr
  for noise in ("Downloading and preparing", "libtpu", "TPU", "Dataset tokenized_text downloaded"):
    assert noise not in output, (noise, output[:3000])
  absl_info = [l for l in output.splitlines() if l[:1] == "I" and l[1:5].isdigit()]  # absl: I1201 12:00:00 ...
  assert not absl_info, absl_info[:5]
  shown = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), f"--config={ROOT}/configs/demo.py",
                          "--print_config", "--config.train.lr=0.0042"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
  assert shown.returncode == 0, shown.stderr
  assert "lr: 0.0042" in shown.stdout and "profile_steps" in shown.stdout and "mlm_steps:" in shown.stdout


def test_report_summary_and_plots(tiny_demo, tmp_path, capsys):
  workdir, _ = tiny_demo
  from xlm_jax import report
  assert report.main([str(workdir), "--out", str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert "== " + str(workdir / "nmt") in out and "== " + str(workdir / "pretrain") in out
  assert "held-out at step 20:" in out and "tlm_xa-xb" in out and "bleu_xa-xb=" in out
  assert "throughput:" in out and "tokens/s" in out and "MFU" in out and "hyp:" in out
  for phase in ("pretrain", "nmt"):
    for name in ("loss.png", "accuracy.png", "speed.png"):
      data = open(tmp_path / phase / name, "rb").read()
      assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, (phase, name)
  m = report.read_metrics(str(workdir / "pretrain"))
  assert list(m.train["step"]) == [10, 20] and list(m.eval["step"]) == [10, 20]
  assert m.start["task"] == "pretrain" and m.config["task"] == "pretrain"
  assert report.main([str(tmp_path / "nothing")]) == 2


def test_bundle_api_for_notebooks(tiny_demo):
  workdir, _ = tiny_demo
  import xlm_jax
  from xlm_jax import api
  b = xlm_jax.load(str(workdir / "pretrain"))
  text = repr(b)
  assert "pretrain: encoder (MLM), 2 layers, d=32" in text and "languages: xa xb xc" in text and "held-out:" in text
  assert list(b.metrics().eval["step"]) == [10, 20]

  ids = b.encode(["Bogu rin delans wogi.", "Ka delan?", "Bogu rin delans wogi ka delan rin bogu."], lang="xa")
  states = b.hidden_states(ids, langs="xa", all_layers=True)
  assert states.shape == (3,) + ids.shape + (32,)
  np.testing.assert_allclose(states[-1], b.hidden_states(ids, langs="xa"), atol=1e-5)
  assert np.all(states[:, 1, ids[1] == b.tokenizer.pad_id] == 0)
  # bucketing: rows and widths padded to a few shapes, results independent of the company a row keeps
  np.testing.assert_allclose(b.hidden_states(ids[1:2, :int((ids[1] != 2).sum())], langs="xa")[0],
                             states[-1, 1, :int((ids[1] != 2).sum())], atol=1e-5)
  fn = api._encode_fn(b.model)
  before = fn._cache_size()
  shapes = set()
  for words, rows in [(n, 3) for n in range(1, 9)] + [(4, n) for n in (5, 6, 7)]:
    ids_n = b.encode(["wogi " * words] * rows, lang="xa")
    shapes.add(ids_n.shape)
    assert b.hidden_states(ids_n, langs="xa").shape == ids_n.shape + (32,)
  assert len(shapes) >= 8 and fn._cache_size() - before <= 3, "new lengths recompiled"

  e = b.embed(["Bogu rin delans wogi.", "Ka delan?"], lang="xa")
  assert e.shape == (2, 32) and np.allclose(e, states[-1, :2, 0], atol=1e-5)
  mean = b.embed(["Ka delan?"], lang="xa", pooling="mean", layer=0)
  assert mean.shape == (1, 32)
  alone = b.fill_mask("Bogu rin <mask> wogi.", lang="xa", top_k=3)
  with_context = b.fill_mask("Bogu rin <mask> wogi.", lang="xa", top_k=3, context="Ka delan?", context_lang="xb")
  assert len(alone) == len(with_context) == 1 and len(with_context[0]) == 3
  assert alone[0] != with_context[0]  # the context row changes the prediction's probabilities
  assert "encoder-decoder (translation)" in repr(xlm_jax.load(str(workdir / "nmt")))
