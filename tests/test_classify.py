"""Cross-lingual classification: readers (XTREME, official XNLI-1.0, generic TSV/JSONL, TFDS mock), row packing,
fine-tuning end to end with the table, the classifier bundle's API, translate-test, and bad input.

Bundles here are random models of a few thousand parameters with a tokenizer trained on a few lines, so each
fine-tuning run compiles in seconds; what is tested is the path, the framing and the bookkeeping, not accuracy.
"""
from __future__ import annotations

import gzip
import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from conftest import JIT_CACHE
from xlm_jax import checkpoint as ckpt
from xlm_jax.data.labelled import parse_items, read_item, read_table
from xlm_jax.data.rows import ClassifyRows
from xlm_jax.data.stores import TokenStore
from xlm_jax.errors import UserError

WORDS = {"en": "the a man woman dog runs sits red blue street water ball".split(),
         "de": "der die ein mann frau hund rennt sitzt rot blau strasse wasser".split(),
         "fr": "le la un homme femme chien court assis rouge bleu rue eau".split()}


def sentences(lang: str, n: int, seed: int) -> list[str]:
  rng = np.random.default_rng(seed)
  return [" ".join(rng.choice(WORDS[lang], size=int(rng.integers(3, 8)))) for _ in range(n)]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
  """(encoder bundle, NMT bundle) of random tiny models over en, de, fr with one shared tokenizer."""
  from xlm_jax.model import TransformerConfig, init_encoder_decoder, init_params
  from xlm_jax.tokenizer import train_sentencepiece
  root = tmp_path_factory.mktemp("bundles")
  texts = {l: (lambda l=l: iter(sentences(l, 300, 1))) for l in WORDS}
  tok = train_sentencepiece(texts, 120, n_sentences=900)
  cfg = TransformerConfig(vocab_size=tok.vocab_size, n_langs=3, pad_id=tok.pad_id, emb_dim=32, n_layers=2, n_heads=4,
                          max_positions=64)
  base = {"format": ckpt.BUNDLE_FORMAT, "languages": ["de", "en", "fr"], "tokenizer": tok.state(), "config": {}}
  enc = ckpt.Checkpointer(str(root / "enc" / "checkpoints"), async_save=False)
  enc.save(1, nn.unbox(init_params(cfg, jax.random.key(0))),
           dict(base, task="pretrain", architecture="encoder", model=cfg.to_dict()))
  enc.close()
  dec_cfg = cfg.replace(is_decoder=True, causal=True)
  mt = ckpt.Checkpointer(str(root / "nmt" / "checkpoints"), async_save=False)
  mt.save(1, nn.unbox(init_encoder_decoder(cfg, dec_cfg, jax.random.key(1))),
          dict(base, task="nmt", architecture="encoder_decoder", model=cfg.to_dict(), decoder_model=dec_cfg.to_dict()))
  mt.close()
  return str(root / "enc"), str(root / "nmt")


def write_tsv(path, rows, header=("premise", "hypothesis", "label"), gz=False):
  text = "\n".join("\t".join(r) for r in [header, *rows]) + "\n"
  if gz:
    with gzip.open(path, "wt", encoding="utf-8") as f:
      f.write(text)
  else:
    path.write_text(text, encoding="utf-8")
  return str(path)


def nli_rows(lang: str, n: int, seed: int) -> list[tuple[str, str, str]]:
  """Pairs labelled by a rule a model could learn: the same sentence twice -> entailment, else contradiction or
  neutral by the parity of the second sentence's length."""
  a, b = sentences(lang, n, seed), sentences(lang, n, seed + 100)
  out = []
  for i in range(n):
    if i % 3 == 0:
      out.append((a[i], a[i], "entailment"))
    else:
      out.append((a[i], b[i], "contradiction" if len(b[i].split()) % 2 else "neutral"))
  return out


@pytest.fixture(scope="module")
def xtreme(tmp_path_factory):
  """XTREME-layout files: train.en, dev.{de,en,fr} (gzip, header premise/hypothesis/label)."""
  root = tmp_path_factory.mktemp("xtreme")
  write_tsv(root / "train.en.tsv.gz", nli_rows("en", 60, 0), gz=True)
  for k, lang in enumerate(("de", "en", "fr")):
    write_tsv(root / f"dev.{lang}.tsv.gz", nli_rows(lang, 24, 10 + k), gz=True)
  return str(root)


def classify_config(bundle: str, **overrides):
  from configs.classify import get_config
  from xlm_jax.config_base import override
  c = get_config("tiny")
  c.init.bundle = bundle
  c.data.test = ""
  c.model.dtype = "float32"
  c.classify.row_length = 32
  c.data.batch_size = 8
  c.train.steps = 4
  c.train.warmup_steps = 1
  c.log.eval_every = 2
  c.log.every = 2
  c.checkpoint.every = 4
  c.checkpoint.async_save = False
  c.log.progress_bar = False
  c.log.peak_flops = 1e11
  c.data.workers = 0
  c.compilation_cache_dir = JIT_CACHE
  override(c, overrides)
  return c


# --- rows ----------------------------------------------------------------------------------------------------------


def test_rows_frame_pairs_with_one_language_id_and_read_the_first_token():
  eos, pad = 1, 2
  examples = [[10, 11, eos, 12], [20, eos, 21, 22, 23], [30, eos, 31]]  # `a </s> b` each
  rows = ClassifyRows(TokenStore.from_sentences(examples, eos), np.array([0, 2, 1]), lang_id=4, length=20,
                      pad_id=pad)
  out = rows.eval_rows(10)
  assert out["tokens"].shape == (1, 20) and out["pred_index"].shape == (1, 20 // 3)
  t, seg = out["tokens"][0], out["segment_ids"][0]
  assert t[:6].tolist() == [eos, 10, 11, eos, 12, eos]          # </s> a </s> b </s>
  assert t[6:13].tolist() == [eos, 20, eos, 21, 22, 23, eos]
  assert seg[:6].tolist() == [1] * 6 and seg[6:13].tolist() == [2] * 7 and seg[-1] == 0
  assert out["positions"][0, 6:13].tolist() == list(range(7))   # positions restart per example, continuous inside
  assert set(out["langs"][0][seg > 0].tolist()) == {4}  # the language id on every token
  assert seg[13:18].tolist() == [3] * 5 and out["pred_index"][0, :3].tolist() == [0, 6, 13] and out["pred_targets"][0, :3].tolist() == [0, 2, 1]
  assert out["pred_weights"][0].sum() == 3
  train = rows.rows(np.random.default_rng(0), 4)
  starts = train["pred_index"][train["pred_weights"] > 0]
  rows_of = np.nonzero(train["pred_weights"] > 0)[0]
  assert (train["tokens"][rows_of, starts] == eos).all() and (train["positions"][rows_of, starts] == 0).all()


# --- readers -------------------------------------------------------------------------------------------------------

OFFICIAL_HEADER = ("language", "gold_label", "sentence1_binary_parse", "sentence2_binary_parse", "sentence1_parse",
                   "sentence2_parse", "sentence1", "sentence2", "promptID", "pairID", "genre", "label1", "label2",
                   "label3", "label4", "label5", "sentence1_tokenized", "sentence2_tokenized", "match")


def official_rows():
  rows = []
  for lang, (p, h) in (("de", ("der hund rennt", "ein hund")), ("en", ("the dog runs", "a dog")),
                       ("fr", ("le chien court", "un chien")), ("de", ("die frau sitzt", "der mann"))):
    label = "entailment" if "hund" in p and lang == "de" else "neutral"
    rows.append((lang, label, "(x)", "(y)", "(X)", "(Y)", p, h, "1", "2", "travel", label, label, label, label,
                 label, p, h, "True"))
  return rows


def test_official_xnli_layout_picks_rows_by_language(tmp_path):
  path = write_tsv(tmp_path / "xnli.dev.tsv", official_rows(), header=OFFICIAL_HEADER)
  de = read_item(parse_items(f"de:xnli-official:{path}", "config.data.eval")[0])
  assert de.first == ["der hund rennt", "die frau sitzt"] and de.second == ["ein hund", "der mann"]
  assert de.labels == ["entailment", "neutral"] and de.where[1].endswith("line 5")
  with pytest.raises(UserError, match=r"no rows for language 'zz'.*de, en, fr"):
    read_item(parse_items(f"zz:xnli-official:{path}", "config.data.eval")[0])


def test_items_expand_languages_and_read_xtreme_and_jsonl(tmp_path, xtreme):
  items = parse_items(f"de+fr:{xtreme}/dev.{{lang}}.tsv.gz", "config.data.eval")
  assert [(i.lang, os.path.basename(i.source)) for i in items] == [("de", "dev.de.tsv.gz"), ("fr", "dev.fr.tsv.gz")]
  fr = read_item(items[1])
  assert len(fr) == 24 and fr.is_pair and set(fr.labels) == {"entailment", "neutral", "contradiction"}
  path = tmp_path / "single.jsonl"
  path.write_text("\n".join(json.dumps({"text": f"sentence {i}", "label": "pos" if i % 2 else "neg"})
                            for i in range(5)) + "\n")
  single = read_table(str(path), "en")
  assert not single.is_pair and single.labels[:2] == ["neg", "pos"] and single.first[4] == "sentence 4"


XNLI15 = "ar bg de el en es fr hi ru sw th tr ur vi zh".split()


def mock_records(builder, *args, **kwargs):
  """Records in the layout of TFDS `xnli` (premise: a text per language; hypothesis: {language, translation}
  lists) and `multi_nli` (premise, hypothesis, label; -1 = no gold label). The default mock draws random language
  codes, so the xnli records are made here, in the real layout."""
  out = []
  for i in range(12):
    if builder.name == "xnli":
      order = XNLI15[::-1]  # the translation list is not in alphabetical order
      out.append({"premise": {l: f"{l} premise {i}".encode() for l in XNLI15},
                  "hypothesis": {"language": np.array(order), "translation": np.array([f"{l} hyp {i}" for l in order])},
                  "label": np.array(i % 3)})
    else:
      out.append({"premise": f"premise {i}".encode(), "hypothesis": f"hyp {i}".encode(),
                  "label": np.array(-1 if i == 5 else i % 3)})
  return out


def test_tfds_xnli_and_multi_nli_with_mock_data():
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE,
                              as_data_source_fn=mock_records):
    mnli = read_item(parse_items("en:tfds:multi_nli/train", "config.data.train")[0])
    xnli = read_item(parse_items("de:tfds:xnli/validation", "config.data.eval")[0])
  names = ["entailment", "neutral", "contradiction"]  # the ClassLabel order of both TFDS builders
  assert len(mnli) == 11 and mnli.first[0] == "premise 0" and mnli.labels[:3] == names  # the -1 record is left out
  assert len(xnli) == 12 and xnli.first[4] == "de premise 4" and xnli.second[4] == "de hyp 4"
  assert xnli.labels[:3] == names and xnli.lang == "de"


def test_tfds_mock_data_end_to_end_writes_the_table(tmp_path, bundles):
  """The xnli15_paper data path with TFDS mock records: fine-tune on `multi_nli/train`, evaluate `xnli/validation`
  per language, and write results.json and the markdown table."""
  import tensorflow_datasets as tfds
  from xlm_jax.train import classify
  workdir = tmp_path / "tfds"
  c = classify_config(bundles[0], **{"data.train": "en:tfds:multi_nli/train",
                                     "data.eval": "de+en+fr:tfds:xnli/validation",
                                     "classify.labels": "contradiction,neutral,entailment"})
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE,
                              as_data_source_fn=mock_records):
    results = classify.run(c, str(workdir))
  rows = {r["lang"]: r for r in results["summary"]["rows"]}
  assert set(rows) == {"de", "en", "fr"} and all(r["examples"] == 12 for r in rows.values())
  assert json.loads((workdir / "results.json").read_text())["summary"]["rows"] == results["summary"]["rows"]
  assert (workdir / "results.md").read_text().splitlines()[0] == "| | de | en | fr | avg |"


# --- bad input: one sentence naming the file, line, label or language --------------------------------------------


def test_bad_files_are_one_sentence(tmp_path):
  missing = write_tsv(tmp_path / "missing.tsv", [("a", "b")], header=("words", "label"))
  with pytest.raises(UserError, match=r"missing\.tsv, line 1 \(header\): no text column"):
    read_table(missing, "en")
  half = write_tsv(tmp_path / "half.tsv", [("a", "b", "x")], header=("premise", "hypo", "label"))
  with pytest.raises(UserError, match=r"half\.tsv, line 1 \(header\): column 'premise' is there but 'hypothesis'"):
    read_table(half, "en")
  short = write_tsv(tmp_path / "short.tsv", [("a", "b", "x"), ("a", "y")])
  with pytest.raises(UserError, match=r"short\.tsv, line 3: 2 tab-separated field\(s\), the header has 3"):
    read_table(short, "en")
  empty = tmp_path / "empty.tsv"
  empty.write_text("")
  with pytest.raises(UserError, match=r"empty\.tsv is empty"):
    read_table(str(empty), "en")
  header_only = write_tsv(tmp_path / "header.tsv", [])
  with pytest.raises(UserError, match=r"header\.tsv has a header but no rows"):
    read_table(header_only, "en")
  with pytest.raises(UserError, match=r"nothing\.tsv does not exist"):
    read_table(str(tmp_path / "nothing.tsv"), "en")
  with pytest.raises(UserError, match=r"must be LANG:SOURCE"):
    parse_items("/path/without/language.tsv", "config.data.train")


def test_labels_that_differ_and_a_language_the_bundle_lacks(tmp_path, bundles, xtreme):
  from xlm_jax.train import classify
  odd = write_tsv(tmp_path / "dev.odd.tsv", [("a b", "c", "entailment"), ("a", "b", "maybe")])
  c = classify_config(bundles[0], **{"data.train": f"en:{xtreme}/train.en.tsv.gz", "data.eval": f"en:{odd}"})
  with pytest.raises(UserError, match=r"dev\.odd\.tsv, line 3: label 'maybe' is not one of the training labels"):
    classify.run(c, str(tmp_path / "w1"))
  c = classify_config(bundles[0], **{"data.train": f"en:{xtreme}/train.en.tsv.gz",
                                     "data.eval": f"en+sw:{xtreme}/dev.en.tsv.gz"})
  with pytest.raises(UserError, match=r"language 'sw' .*dev\.en\.tsv\.gz.* not one of the bundle's languages"):
    classify.run(c, str(tmp_path / "w2"))
  c = classify_config(bundles[0], **{"data.train": f"en:{xtreme}/train.en.tsv.gz",
                                     "data.eval": f"en:{xtreme}/dev.en.tsv.gz", "classify.labels": "entailment,neutral"})
  with pytest.raises(UserError, match=r"train\.en\.tsv\.gz, line \d+: label 'contradiction' is not one of the "
                                      r"training labels \['entailment', 'neutral'\]"):
    classify.run(c, str(tmp_path / "w3"))
  assert not (tmp_path / "w1").exists() or not any((tmp_path / "w1").rglob("checkpoints"))


# --- end to end ------------------------------------------------------------------------------------------------------


def test_zero_shot_end_to_end_table_bundle_and_api(tmp_path, bundles, xtreme):
  import xlm_jax
  from xlm_jax.train import classify
  workdir = tmp_path / "zs"
  c = classify_config(bundles[0], **{"data.train": f"en:{xtreme}/train.en.tsv.gz",
                                     "data.eval": f"de+en+fr:{xtreme}/dev.{{lang}}.tsv.gz",
                                     "data.test": "", "classify.seeds": "0,1",
                                     "classify.labels": "contradiction,neutral,entailment",
                                     "classify.finetune_layers": "2:"})
  results = classify.run(c, str(workdir))
  saved = json.loads((workdir / "results.json").read_text())
  assert saved["summary"]["labels"] == ["contradiction", "neutral", "entailment"]
  rows = {r["lang"]: r for r in saved["summary"]["rows"]}
  assert set(rows) == {"de", "en", "fr"} and all(len(r["acc"]) == 2 and r["examples"] == 24 for r in rows.values())
  assert all(sum(p) == 24 for r in rows.values() for p in r["predicted"])  # every example predicted once
  assert abs(saved["summary"]["average"] - np.mean([r["mean"] for r in rows.values()])) < 1e-9
  table = (workdir / "results.md").read_text()
  assert table.splitlines()[0] == "| | de | en | fr | avg |" and "±" in table.splitlines()[2]
  assert results["select_set"] == "dev.en"
  # the frozen slice did not move: layer 0 (index 1 of [embeddings, layer 0, layer 1]) is outside '2:'
  tuned, _ = ckpt.restore_params(str(workdir / "seed_0"))
  start, _ = ckpt.restore_params(bundles[0])
  np.testing.assert_array_equal(tuned["encoder"]["layers_0"]["ffn"]["lin1"]["kernel"],
                                start["layers_0"]["ffn"]["lin1"]["kernel"])
  assert not np.array_equal(tuned["encoder"]["layers_1"]["ffn"]["lin1"]["kernel"],
                            start["layers_1"]["ffn"]["lin1"]["kernel"])
  b = xlm_jax.load(str(workdir))
  assert b.labels == ["contradiction", "neutral", "entailment"]
  probs = b.class_probabilities(["the dog runs", "a man sits"], ["the dog runs", "blue water"], lang="de")
  assert probs.shape == (2, 3) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
  assert b.classify(["the dog runs"], ["the dog runs"], lang="fr")[0] in b.labels
  assert b.embed(["the dog runs"], lang="en").shape == (1, 32)
  # the bundle classifies a dev set as the evaluation did (same framing, language ids, head)
  dev = read_table(f"{xtreme}/dev.en.tsv.gz", "en")
  predicted = b.classify(dev.first, dev.second, lang="en")
  best = saved["bundle"]["seed"]
  record = next(r for r in saved["per_seed"] if r["seed"] == best)
  assert np.mean([p == t for p, t in zip(predicted, dev.labels)]) == pytest.approx(record["eval"]["dev.en"]["acc"])
  with pytest.raises(UserError, match=r"is a classifier, not a translation model, and cannot translate"):
    b.translate(["the dog"], src="en", tgt="de")
  with pytest.raises(UserError, match=r"unknown language 'sw'"):
    b.classify(["x"], ["y"], lang="sw")
  # a second run on the same workdir reuses the finished seeds
  again = classify.run(c, str(workdir))
  assert again["summary"]["rows"] == saved["summary"]["rows"]


def test_translate_test_official_layout_and_collapse_warning(tmp_path, bundles, xtreme, capsys):
  from xlm_jax.train import classify
  official = write_tsv(tmp_path / "xnli.test.tsv", official_rows() * 3, header=OFFICIAL_HEADER)
  workdir = tmp_path / "tt"
  c = classify_config(bundles[0], **{"data.train": f"en:{xtreme}/train.en.tsv.gz",
                                     "data.eval": f"en:{xtreme}/dev.en.tsv.gz",
                                     "data.test": f"de+fr:xnli-official:{official}",
                                     "classify.mode": "translate_test", "classify.translate_bundle": bundles[1],
                                     "classify.collapse_share": 0.0})
  results = classify.run(c, str(workdir))
  rows = {r["lang"]: r for r in results["summary"]["rows"]}
  assert set(rows) == {"de", "fr"} and rows["de"]["lang_id_of"] == "en" and rows["de"]["examples"] == 6
  cached = sorted(p.name for p in (workdir / "translated").iterdir())
  assert cached == ["test.de-en.tsv", "test.fr-en.tsv"]
  assert len(read_table(str(workdir / "translated" / "test.de-en.tsv"), "en")) == 6
  table = (workdir / "results.md").read_text()
  assert "de (id of en)" in table and "collapse to one class" in table  # any prediction share > 0 warns here
  assert "collapse to one class" in capsys.readouterr().out


def test_xnli15_paper_recipe_shapes_and_data_path():
  """The paper's recipe cannot run here (no weights, no MultiNLI): its config parses into the TFDS items, its data
  path is read under mock data (test_tfds_xnli_and_multi_nli_with_mock_data), and a random model of the paper's
  shape (12 layers, d=1024, V=95,000, 15 languages) goes through one abstract training step (shapes, parameter
  groups, optimizer state; jax.eval_shape, no arithmetic)."""
  import jax.numpy as jnp
  from configs.classify import get_config
  from configs.xlm_paper import get_config as paper
  from xlm_jax.model import Classifier, init_classifier
  from xlm_jax.run_setup import model_config
  from xlm_jax.train import classify
  from xlm_jax.train.optim import make_split_optimizer
  c = get_config("xnli15_paper")
  assert [i.lang for i in parse_items(c.data.eval, "eval")] == XNLI15
  assert {i.kind for i in parse_items(c.data.train + "," + c.data.test, "x")} == {"tfds"}
  p = paper("xlm_mlm_tlm_xnli15_1024")
  cfg = model_config(p, 95000, 15, 2).replace(scan_layers=False, dtype="bfloat16")
  params = jax.eval_shape(lambda: nn.unbox(init_classifier(cfg, 3, jax.random.key(0), 0.1)))
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  assert n == 249_071_384 + 1024 * 3 + 3  # the bundle's parameters plus the head
  tx, _ = make_split_optimizer(c.train, {"encoder": c.classify.lr_encoder, "head": c.classify.lr_head},
                               lambda t: classify.group_labels(t, classify.parse_layer_range("0:", 12)))
  model = Classifier(cfg, 3, 0.1)
  loss = classify.make_loss(model)
  rows, length = int(c.data.batch_size), int(c.classify.row_length)
  batch = {"cls": {k: jax.ShapeDtypeStruct((rows, length), jnp.int32) for k in ("tokens", "positions", "langs",
                                                                               "segment_ids")}}
  batch["cls"].update(pred_index=jax.ShapeDtypeStruct((rows, length // 3), jnp.int32),
                      pred_targets=jax.ShapeDtypeStruct((rows, length // 3), jnp.int32),
                      pred_weights=jax.ShapeDtypeStruct((rows, length // 3), jnp.float32))

  def step(params, batch):
    grads = jax.grad(lambda q: loss.sums(q, batch, jax.random.key(0), False)["cls"].loss)(params)
    updates, _ = tx.update(grads, tx.init(params), params)
    return updates

  updates = jax.eval_shape(step, params, batch)
  assert jax.tree.map(lambda x: x.shape, updates) == jax.tree.map(lambda x: x.shape, params)


def test_xnli15_paper_shape_trains_for_a_few_steps():
  """A random model of the paper's shape (12 layers, d=1024, 16 heads, V=95,000, 15 languages: 249M parameters)
  takes two real fine-tuning steps with the recipe's optimizer (one short row per step, so the CPU does it in
  about a minute): the loss is finite and the parameters move, the encoder at the encoder's rate and the head at
  the head's."""
  import jax.numpy as jnp
  from configs.classify import get_config
  from configs.xlm_paper import get_config as paper
  from xlm_jax.model import Classifier, init_classifier
  from xlm_jax.run_setup import model_config
  from xlm_jax.train import classify
  from xlm_jax.train.optim import make_split_optimizer
  c = get_config("xnli15_paper")
  cfg = model_config(paper("xlm_mlm_tlm_xnli15_1024"), 95000, 15, 2).replace(scan_layers=False, dtype="bfloat16")
  params = nn.unbox(init_classifier(cfg, 3, jax.random.key(0), 0.1))
  tx, _ = make_split_optimizer(c.train, {"encoder": c.classify.lr_encoder, "head": c.classify.lr_head},
                               lambda t: classify.group_labels(t, classify.parse_layer_range("0:", 12)))
  loss = classify.make_loss(Classifier(cfg, 3, 0.1))
  rng = np.random.default_rng(0)
  tokens = rng.integers(10, 95000, size=(1, 48)).astype(np.int32)
  tokens[0, [0, 20, 47]] = 1  # </s> a </s> b </s>
  batch = {"cls": {"tokens": tokens, "positions": np.arange(48, dtype=np.int32)[None],
                   "langs": np.full((1, 48), 4, np.int32), "segment_ids": np.ones((1, 48), np.int32),
                   "pred_index": np.zeros((1, 16), np.int32), "pred_targets": np.full((1, 16), 2, np.int32),
                   "pred_weights": np.eye(1, 16, dtype=np.float32)}}

  @jax.jit
  def step(params, opt_state, key):
    value, grads = jax.value_and_grad(lambda q: loss.sums(q, batch, key, False)["cls"].loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return jax.tree.map(lambda p, u: p + u, params, updates), opt_state, value

  state, start = tx.init(params), params
  losses = []
  for k in range(2):
    params, state, value = step(params, state, jax.random.key(k))
    losses.append(float(value))
  assert all(np.isfinite(losses)), losses
  head_moved = np.abs(np.asarray(params["head"]["kernel"]) - np.asarray(start["head"]["kernel"])).max()
  q = lambda t: np.asarray(t["encoder"]["layers_11"]["attention"]["q_lin"]["kernel"], np.float32)
  enc_moved = np.abs(q(params) - q(start)).max()
  assert 0 < head_moved <= 3 * c.classify.lr_head and 0 < enc_moved <= 3 * c.classify.lr_encoder
