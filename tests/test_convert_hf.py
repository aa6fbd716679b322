"""transformers XLMWithLMHeadModel <-> xlm_jax bundles: logit parity per shape, bit-exact round trips, bad input.

Every model is a randomly initialised transformers model with *every* weight perturbed (a fresh model has zero
biases and identity LayerNorms, which hide mapping bugs). Parity is checked twice: by the converter itself (its
fixed batch) and here, independently, against the in-memory torch model on a right-padded batch whose language
ids change from token to token.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import xlm_jax  # noqa: E402
from xlm_jax import convert  # noqa: E402
from xlm_jax.interop import bundle_io  # noqa: E402
from xlm_jax.interop.tensors import read_safetensors  # noqa: E402

from test_xlm_bpe import TEST, TRAIN, build_bpe, filler_vocab, write_hf_tokenizer_files  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4
XNLI15 = "ar bg de el en es fr hi ru sw th tr ur vi zh".split()
XLM17 = "ar de en es fr hi it ja ko nl pl pt ru sv tr vi zh".split()


def lang_maps(codes):
  return {"lang2id": {c: i for i, c in enumerate(codes)}, "id2lang": {i: c for i, c in enumerate(codes)}}


# name -> (vocab size, XLMConfig kwargs). Layer/width/head counts: (1,16,2) (2,32,4) (3,48,6) (1,64,8) (1,24,3).
SHAPES = {
    "2langs_lang_emb": (120, dict(n_layers=2, emb_dim=32, n_heads=4, n_langs=2, **lang_maps(["en", "fr"]),
                                  dropout=0.1, attention_dropout=0.2, max_position_embeddings=40)),
    "1lang": (90, dict(n_layers=1, emb_dim=16, n_heads=2, n_langs=1, dropout=0.0, attention_dropout=0.0,
                       max_position_embeddings=30)),
    "15langs": (150, dict(n_layers=3, emb_dim=48, n_heads=6, n_langs=15, **lang_maps(XNLI15))),
    "17langs_no_lang_emb": (100, dict(n_layers=1, emb_dim=24, n_heads=3, n_langs=17, use_lang_emb=False,
                                      **lang_maps(XLM17), max_position_embeddings=64)),
    "sinusoidal": (110, dict(n_layers=2, emb_dim=32, n_heads=2, n_langs=2, **lang_maps(["de", "en"]),
                             sinusoidal_embeddings=True, max_position_embeddings=50)),
    "causal_clm": (100, dict(n_layers=2, emb_dim=32, n_heads=4, n_langs=2, **lang_maps(["en", "fr"]), causal=True,
                             max_position_embeddings=40)),
    "relu": (100, dict(n_layers=1, emb_dim=64, n_heads=8, n_langs=2, **lang_maps(["en", "ro"]),
                       gelu_activation=False, max_position_embeddings=40)),
}


def perturbed_model(vocab_size: int, seed: int = 0, **kwargs):
  """A transformers XLMWithLMHeadModel with every weight moved off its initial value (the fixed sinusoid kept)."""
  config = transformers.XLMConfig(vocab_size=vocab_size, **kwargs)
  torch.manual_seed(seed)
  model = transformers.XLMWithLMHeadModel(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("position_embeddings.weight") and config.sinusoidal_embeddings:
        continue
      p.add_(torch.randn_like(p) * 0.2)
  return model


def save_hf(model, directory: str, vocab=None, merges=None, lowercase=None) -> str:
  model.save_pretrained(directory)
  vocab = vocab or filler_vocab(model.config.vocab_size)
  write_hf_tokenizer_files(directory, vocab, merges or [("t", "h"), ("th", "e</w>")], lowercase)
  return directory


def make_batch(vocab_size: int, n_langs: int, pad_id: int = 2, seed: int = 1):
  """Right-padded `</s>`-framed rows of lengths 12, 9, 5, 2 with random per-token language ids."""
  rng = np.random.default_rng(seed)
  lengths = [12, 9, 5, 2]
  ids = np.full((4, 12), pad_id, np.int64)
  langs = np.zeros((4, 12), np.int64)
  for r, n in enumerate(lengths):
    ids[r, :n] = rng.integers(14, vocab_size, n)
    ids[r, 0] = ids[r, n - 1] = 1
    langs[r] = rng.integers(0, n_langs, 12)
  return ids, langs, np.arange(12)[None, :] < np.array(lengths)[:, None]


def torch_logits(model, ids, langs):
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(ids), langs=torch.from_numpy(langs)).logits.numpy()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """name -> (torch model, HF dir, bundle dir, converter report), built once per shape on first use."""
  cache: dict = {}

  def get(name: str):
    if name not in cache:
      vocab_size, kwargs = SHAPES[name]
      base = tmp_path_factory.mktemp(name)
      model = perturbed_model(vocab_size, seed=len(cache), **kwargs)
      hf_dir = save_hf(model, str(base / "hf"))
      report = convert.from_hf(hf_dir, str(base / "bundle"), quiet=True)
      cache[name] = (model, hf_dir, str(base / "bundle"), report)
    return cache[name]

  return get


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_parity_with_transformers(converted, name):
  model, hf_dir, out, report = converted(name)
  assert report.parity is not None and report.parity.max_abs_diff <= TOL
  bundle = xlm_jax.load(out)
  cfg, hf_cfg = bundle.model_config, model.config
  ids, langs, keep = make_batch(cfg.vocab_size, cfg.n_langs)
  ours = bundle.logits(ids, langs=langs)
  diff = float(np.abs(ours - torch_logits(model, ids, langs))[keep].max())
  print(f"\n{name}: converter max|Δlogit|={report.parity.max_abs_diff:.3g}, independent batch {diff:.3g}")
  assert diff <= TOL
  # Every behaviour field came across.
  assert (cfg.n_layers, cfg.emb_dim, cfg.n_heads, cfg.vocab_size) == (hf_cfg.n_layers, hf_cfg.emb_dim,
                                                                     hf_cfg.n_heads, hf_cfg.vocab_size)
  assert (cfg.n_langs, cfg.use_lang_emb, cfg.sinusoidal_embeddings, cfg.causal) == (
      hf_cfg.n_langs, hf_cfg.use_lang_emb, hf_cfg.sinusoidal_embeddings, hf_cfg.causal)
  assert cfg.activation == ("gelu" if hf_cfg.gelu_activation else "relu")
  assert (cfg.dropout, cfg.attention_dropout, cfg.max_positions, cfg.pad_id, cfg.layer_norm_eps) == (
      hf_cfg.dropout, hf_cfg.attention_dropout, hf_cfg.max_position_embeddings, hf_cfg.pad_token_id,
      hf_cfg.layer_norm_eps)
  expected_langs = [hf_cfg.id2lang[i] for i in range(hf_cfg.n_langs)] if hf_cfg.n_langs > 1 else ["en"]
  assert bundle.languages == expected_langs
  assert bundle.tokenizer.kind == "xlm_bpe" and bundle.tokenizer.vocab_size == cfg.vocab_size
  if cfg.sinusoidal_embeddings:
    assert "position_embeddings" not in bundle.params  # computed, not a parameter
  if not cfg.has_lang_emb:  # langs are ignored, not rejected
    np.testing.assert_array_equal(ours, bundle.logits(ids))


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_round_trip_hf_ours_hf_is_bit_identical(converted, name, tmp_path):
  model, hf_dir, out, _ = converted(name)
  report = convert.to_hf(out, str(tmp_path / "back"), quiet=True)
  assert report.parity.max_abs_diff <= TOL  # transformers loads what we wrote and agrees with the bundle
  original = read_safetensors(os.path.join(hf_dir, "model.safetensors"))
  again = read_safetensors(str(tmp_path / "back" / "model.safetensors"))
  assert sorted(original) == sorted(again)
  for key in original:
    assert original[key].dtype == again[key].dtype and np.array_equal(original[key], again[key]), key
  config = json.loads((tmp_path / "back" / "config.json").read_text())
  for key, value in json.loads(open(os.path.join(hf_dir, "config.json")).read()).items():
    if key not in ("transformers_version",):
      assert config[key] == value, key
  reloaded = transformers.XLMWithLMHeadModel.from_pretrained(str(tmp_path / "back")).eval()
  ids, langs, keep = make_batch(model.config.vocab_size, model.config.n_langs, seed=3)
  np.testing.assert_array_equal(torch_logits(reloaded, ids, langs), torch_logits(model, ids, langs))


def _our_model(tmp_path, tokenizer_kind: str):
  """A bundle of our own: perturbed init_params, 3 languages, sinusoidal positions, sentencepiece or xlm_bpe."""
  import flax.linen as nn
  import jax
  from xlm_jax.model import TransformerConfig, init_params
  from xlm_jax.tokenizer import train_sentencepiece
  languages = ["de", "en", "fr"]
  if tokenizer_kind == "sentencepiece":
    files = {}
    for lang in languages:
      path = tmp_path / f"{lang}.txt"
      path.write_text("\n".join(TRAIN[lang] * 3 + TRAIN["en"]) + "\n", encoding="utf-8")
      files[lang] = [str(path)]
    tok = train_sentencepiece(files, vocab_size=80, n_sentences=0)
  else:
    from xlm_jax.interop.xlm_bpe import XLMBPETokenizer
    vocab, merges = build_bpe(True, n_merges=60)
    tok = XLMBPETokenizer(vocab, merges, languages=languages)
  cfg = TransformerConfig(vocab_size=tok.vocab_size, emb_dim=32, n_layers=2, n_heads=4, n_langs=3,
                          sinusoidal_embeddings=tokenizer_kind == "sentencepiece", activation="relu",
                          dropout=0.1, attention_dropout=0.1, max_positions=128)
  params = nn.unbox(init_params(cfg, jax.random.key(7)))
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.default_rng(0)
  params = jax.tree.unflatten(tree, [np.asarray(x) + rng.normal(0, 0.2, x.shape).astype(np.float32) for x in leaves])
  m = bundle_io.Converted("encoder", cfg, params, languages, tok, {}, {"format": "test"})
  bundle_dir = str(tmp_path / "ours")
  bundle_io.save_bundle(bundle_dir, m)
  return bundle_dir, params, tok


@pytest.mark.parametrize("tokenizer_kind", ["sentencepiece", "xlm_bpe"])
def test_round_trip_ours_hf_ours_is_bit_identical(tmp_path, tokenizer_kind):
  import jax
  from xlm_jax.checkpoint import tree_paths
  bundle_dir, params, tok = _our_model(tmp_path, tokenizer_kind)
  to = convert.to_hf(bundle_dir, str(tmp_path / "hf"), quiet=True)
  assert to.parity.max_abs_diff <= TOL
  back = convert.from_hf(str(tmp_path / "hf"), str(tmp_path / "again"), quiet=True)
  assert back.parity.max_abs_diff <= TOL
  first, second = xlm_jax.load(bundle_dir), xlm_jax.load(str(tmp_path / "again"))
  a, b = tree_paths(jax.tree.map(np.asarray, first.params)), tree_paths(jax.tree.map(np.asarray, second.params))
  assert sorted(a) == sorted(b)
  for key in a:
    assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key
  assert second.model_config == first.model_config
  assert second.languages == first.languages
  assert second.tokenizer.kind == tokenizer_kind and second.tokenizer.fingerprint() == tok.fingerprint()
  for lang in first.languages:
    np.testing.assert_array_equal(second.encode(TEST[lang], lang), first.encode(TEST[lang], lang))


def test_imported_bundle_encodes_like_xlm_tokenizer(tmp_path):
  """Real text through the imported bundle: ids = `</s>` + XLMTokenizer ids + `</s>`, logits match on them."""
  vocab, merges = build_bpe(True)
  langs = ["de", "el", "en", "fr", "ro", "ru"]
  model = perturbed_model(len(vocab), seed=5, n_layers=2, emb_dim=32, n_heads=4, n_langs=len(langs),
                          **lang_maps(langs), max_position_embeddings=128)
  hf_dir = save_hf(model, str(tmp_path / "hf"), vocab, merges, lowercase=True)
  report = convert.from_hf(hf_dir, str(tmp_path / "b"), quiet=True)
  assert report.parity.tokenizer_sentences == len(langs)
  bundle = xlm_jax.load(str(tmp_path / "b"))
  hf_tok = transformers.XLMTokenizer.from_pretrained(hf_dir)
  rows, row_langs = [], []
  for lang in langs:
    ids = bundle.encode(TEST[lang], lang)
    for row, text in zip(ids, TEST[lang]):
      expected = [1, *hf_tok.convert_tokens_to_ids(hf_tok._tokenize(text, lang=lang)), 1]
      assert list(row[:len(expected)]) == expected and (row[len(expected):] == bundle.tokenizer.pad_id).all()
      rows.append(expected)
      row_langs.append(bundle.lang_id(lang))
  # One right-padded batch of every language's sentences, one language id per row.
  ids = np.full((len(rows), max(map(len, rows))), bundle.tokenizer.pad_id, np.int64)
  for i, r in enumerate(rows):
    ids[i, :len(r)] = r
  lang_ids = np.broadcast_to(np.array(row_langs)[:, None], ids.shape).copy()
  keep = ids != bundle.tokenizer.pad_id
  theirs = torch_logits(model, ids, lang_ids)
  assert float(np.abs(bundle.logits(ids, langs=np.array(row_langs)) - theirs)[keep].max()) <= TOL
  top = bundle.fill_mask("the <mask> dog .", "en", top_k=3)
  assert len(top) == 1 and len(top[0]) == 3


def test_pytorch_bin_weights_are_read(tmp_path):
  """A directory with pytorch_model.bin (tied output weight stored too) converts with parity."""
  model = perturbed_model(100, seed=9, n_layers=1, emb_dim=16, n_heads=2, n_langs=2, **lang_maps(["en", "fr"]),
                          max_position_embeddings=32)
  hf_dir = tmp_path / "hf"
  hf_dir.mkdir()
  model.config.save_pretrained(str(hf_dir))
  torch.save(model.state_dict(), str(hf_dir / "pytorch_model.bin"))
  write_hf_tokenizer_files(str(hf_dir), filler_vocab(100), [("t", "h")])
  report = convert.from_hf(str(hf_dir), str(tmp_path / "b"), quiet=True)
  assert report.parity.max_abs_diff <= TOL


def test_sharded_safetensors_are_followed(good_hf, tmp_path):
  from xlm_jax.interop import hf
  from xlm_jax.interop.tensors import write_safetensors
  hf_dir, _ = good_hf
  state = read_safetensors(os.path.join(hf_dir, "model.safetensors"))
  d = _copy(hf_dir, tmp_path / "sharded")
  os.remove(os.path.join(d, "model.safetensors"))
  keys = sorted(state)
  weight_map = {}
  for i, part in enumerate((keys[::2], keys[1::2])):
    name = f"model-0000{i + 1}-of-00002.safetensors"
    write_safetensors(os.path.join(d, name), {k: state[k] for k in part})
    weight_map.update({k: name for k in part})
  with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
  again, source = hf.read_weights(d)
  assert source == "model.safetensors.index.json" and sorted(again) == keys
  assert all(np.array_equal(again[k], state[k]) for k in keys)


def test_without_torch_safetensors_still_convert(converted, tmp_path, monkeypatch, capsys):
  """torch and transformers are optional for users: a safetensors directory converts, the check says it skipped."""
  _, hf_dir, out, _ = converted("1lang")
  monkeypatch.setitem(sys.modules, "torch", None)
  monkeypatch.setitem(sys.modules, "transformers", None)
  report = convert.from_hf(hf_dir, str(tmp_path / "b"))
  assert report.parity is None
  assert "parity check skipped: torch and transformers not installed" in capsys.readouterr().out
  a, b = xlm_jax.load(out), xlm_jax.load(str(tmp_path / "b"))
  ids, _, _ = make_batch(a.model_config.vocab_size, 1)
  np.testing.assert_array_equal(a.logits(ids), b.logits(ids))


# ----------------------------------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def good_hf(tmp_path_factory):
  model = perturbed_model(120, seed=11, n_layers=1, emb_dim=16, n_heads=2, n_langs=2, **lang_maps(["en", "fr"]),
                          max_position_embeddings=32)
  return save_hf(model, str(tmp_path_factory.mktemp("good") / "hf")), model


def run_main(argv, capsys) -> tuple[int, str]:
  with pytest.raises(SystemExit) as exit_info:
    convert.main(argv)
  err = capsys.readouterr().err
  return exit_info.value.code, err


def assert_clean_failure(code: int, err: str, out_dir, *patterns: str) -> None:
  lines = [line for line in err.strip().splitlines() if line.strip()]
  assert code == 2, err
  assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
  for pattern in patterns:
    assert re.search(pattern, lines[0]), (pattern, lines[0])
  out_dir = str(out_dir)
  assert not os.path.exists(out_dir)
  parent = os.path.dirname(out_dir)
  if os.path.isdir(parent):
    assert not [n for n in os.listdir(parent) if ".tmp-" in n], os.listdir(parent)


def _copy(src: str, dst) -> str:
  shutil.copytree(src, str(dst))
  return str(dst)


def test_bert_and_xlmr_configs_are_refused(tmp_path, capsys):
  for model_type, arch, pattern in (("bert", "BertForMaskedLM", "BERT"),
                                    ("xlm-roberta", "XLMRobertaForMaskedLM", "XLM-R")):
    d = tmp_path / model_type
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": [arch],
                                               "hidden_size": 32, "vocab_size": 100}))
    code, err = run_main(["from-hf", str(d), str(tmp_path / "out" / model_type)], capsys)
    assert_clean_failure(code, err, tmp_path / "out" / model_type, pattern, "config.json")
  assert not (tmp_path / "out").exists()  # the parent it would have created is gone too


def test_truncated_weights_are_refused(good_hf, tmp_path, capsys):
  hf_dir, model = good_hf
  d = _copy(hf_dir, tmp_path / "st")
  path = os.path.join(d, "model.safetensors")
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  code, err = run_main(["from-hf", d, str(tmp_path / "out1")], capsys)
  assert_clean_failure(code, err, tmp_path / "out1", "truncated", "model.safetensors")

  d = _copy(hf_dir, tmp_path / "bin")
  os.remove(os.path.join(d, "model.safetensors"))
  path = os.path.join(d, "pytorch_model.bin")
  torch.save(model.state_dict(), path)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 300)
  code, err = run_main(["from-hf", d, str(tmp_path / "out2")], capsys)
  assert_clean_failure(code, err, tmp_path / "out2", "truncated", "pytorch_model.bin")


def test_vocab_size_mismatch_names_both_numbers(good_hf, tmp_path, capsys):
  hf_dir, _ = good_hf
  d = _copy(hf_dir, tmp_path / "v")
  write_hf_tokenizer_files(d, filler_vocab(127), [("t", "h")])
  code, err = run_main(["from-hf", d, str(tmp_path / "out")], capsys)
  assert_clean_failure(code, err, tmp_path / "out", r"\b127\b", r"\b120\b", "--max_vocab", "dico_id2word")


def test_missing_tokenizer_files_are_refused(good_hf, tmp_path, capsys):
  hf_dir, _ = good_hf
  for missing in ("merges.txt", "vocab.json"):
    d = _copy(hf_dir, tmp_path / missing)
    os.remove(os.path.join(d, missing))
    code, err = run_main(["from-hf", d, str(tmp_path / f"out-{missing}")], capsys)
    assert_clean_failure(code, err, tmp_path / f"out-{missing}", re.escape(missing), "missing")


def test_malicious_pickle_is_refused(good_hf, tmp_path, capsys):
  hf_dir, _ = good_hf
  d = _copy(hf_dir, tmp_path / "evil")
  os.remove(os.path.join(d, "model.safetensors"))
  marker = tmp_path / "pwned"

  class Evil:
    def __reduce__(self):
      return (open, (str(marker), "w"))

  torch.save({"transformer.embeddings.weight": Evil()}, os.path.join(d, "pytorch_model.bin"))
  code, err = run_main(["from-hf", d, str(tmp_path / "out")], capsys)
  assert_clean_failure(code, err, tmp_path / "out", "refusing to load", "pytorch_model.bin")
  assert not marker.exists()


def test_parity_failure_and_existing_output_leave_nothing(good_hf, tmp_path, capsys, monkeypatch):
  """A model that disagrees (here: transformers' side given a slightly different output bias, as a mapping bug
  would) fails the conversion; so does an existing OUT_DIR. Neither leaves anything behind."""
  from xlm_jax.interop import parity
  hf_dir, _ = good_hf
  load = parity.hf_model_from_dir

  def off_by_a_little(path):
    model = load(path)
    with torch.no_grad():
      model.pred_layer.proj.bias[7] += 1e-3
    return model

  monkeypatch.setattr(parity, "hf_model_from_dir", off_by_a_little)
  code, err = run_main(["from-hf", hf_dir, str(tmp_path / "out"), "--quiet"], capsys)
  assert_clean_failure(code, err, tmp_path / "out", "disagrees with transformers", "nothing was written")
  monkeypatch.undo()
  (tmp_path / "exists").mkdir()
  code, err = run_main(["from-hf", hf_dir, str(tmp_path / "exists"), "--quiet"], capsys)
  assert code == 2 and "already exists" in err and not os.listdir(tmp_path / "exists")


def _cli(*args: str) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": ROOT}
  return subprocess.run([sys.executable, "-m", "xlm_jax.convert", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)


def test_cli_from_hf_and_to_hf(good_hf, tmp_path):
  """The real command lines: from-hf prints the parity figure; to-hf writes what transformers loads."""
  hf_dir, model = good_hf
  result = _cli("from-hf", hf_dir, str(tmp_path / "bundle"))
  assert result.returncode == 0, result.stderr
  figure = float(re.search(r"max \|Δlogit\| = (\S+)", result.stdout).group(1))
  assert figure <= TOL
  result = _cli("to-hf", str(tmp_path / "bundle"), str(tmp_path / "hf"), "--no-check")
  assert result.returncode == 0, result.stderr
  again = transformers.XLMWithLMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
  ids, langs, _ = make_batch(120, 2)
  np.testing.assert_array_equal(torch_logits(again, ids, langs), torch_logits(model, ids, langs))
  bad = tmp_path / "bert"
  bad.mkdir()
  (bad / "config.json").write_text(json.dumps({"model_type": "bert"}))
  result = _cli("from-hf", str(bad), str(tmp_path / "nope"))
  assert result.returncode == 2 and result.stderr.strip().startswith("error: ") and "\n" not in result.stderr.strip()
  assert not (tmp_path / "nope").exists()
