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


def _suffix_cipher(line: str) -> str:
  """The second toy language: every word of xa with the suffix 'q' (final punctuation kept after it)."""
  return " ".join(w[:-1] + "q" + w[-1] if w[-1] in ".?!," else w + "q" for w in line.split())


def test_a_few_unmt_steps_translate_better_than_copying_the_source(tmp_path):
  """Denoising + back-translation alone (no sentence pair in training: xa from the first half of the generated
  corpus's xa lines, xz from the second half) learn to translate between the toy corpus's xa and a suffix cipher of
  it: after 800 steps, held-out BLEU in both directions is well above the copy-the-source baseline (BLEU of the
  untranslated source, 0.14 here), above the output's own BLEU against its source (it does not copy), and higher
  than at step 200. Measured: 0.34 / 0.26 at step 266, 1.0 / 0.9 at step 800. Also an unsupervised run with
  no parallel *training* file at all (only valid/test pairs for BLEU), which failed before issue 14's fix."""
  import json
  import os
  from xlm_jax.data import synthetic
  from xlm_jax.train import nmt
  generated, corpus = tmp_path / "generated", tmp_path / "corpus"
  synthetic.generate_corpus(generated, seed=0, n_mono=2000, n_para=100, n_valid=100, n_test=100)
  corpus.mkdir()
  for split in ("train", "valid", "test"):
    xa = (generated / f"{split}.xa").read_text().splitlines()
    first, second = (xa[:len(xa) // 2], xa[len(xa) // 2:]) if split == "train" else (xa, xa)
    (corpus / f"{split}.xa").write_text("\n".join(first) + "\n")
    (corpus / f"{split}.xz").write_text("\n".join(map(_suffix_cipher, second)) + "\n")
    if split != "train":
      (corpus / f"{split}.xa-xz.xa").write_text("\n".join(xa) + "\n")
      (corpus / f"{split}.xa-xz.xz").write_text("\n".join(map(_suffix_cipher, xa)) + "\n")
  c = tiny_config(**{**UNMT, "data.corpus": str(corpus), "data.languages": "xa,xz", "nmt.ae_steps": "xa,xz",
                     "nmt.bt_steps": "xa-xz-xa,xz-xa-xz", "nmt.word_shuffle": 3.0, "nmt.word_dropout": 0.1,
                     "nmt.word_blank": 0.1, "nmt.bleu_sentences": 100, "nmt.roundtrip_sentences": 0,
                     "model.emb_dim": 64, "train.steps": 800, "train.lr": 3e-3, "train.warmup_steps": 30,
                     "log.eval_every": 200, "checkpoint.every": 800, "data.workers": 0})
  assert not any(name.startswith("train.xa-xz") for name in os.listdir(corpus))
  nmt.run(c, str(tmp_path / "run"))
  evals = {r["step"]: r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
           if r.get("kind") == "eval"}
  first, last = evals[200], evals[800]
  for d in ("xa-xz", "xz-xa"):
    assert last[f"bleu_{d}"] > 3 * last[f"source_bleu_{d}"], (d, last)
    assert last[f"bleu_{d}"] > 2 * last[f"copy_bleu_{d}"], (d, last)
    assert last[f"bleu_{d}"] > first[f"bleu_{d}"], (d, first, last)


def test_the_discriminator_trains_itself_on_the_states_and_the_encoder_against_it(tmp_path):
  """`config.nmt.lambda_dis` (Lample et al. 2018's adversarial term): the `dis` objective's gradient reaches only
  the discriminator, the `adv` objective's only the encoder (never the decoder, never the discriminator), both over
  the real tokens of the denoising sources; a fresh discriminator is at chance. Off (the default '0'), the tree has
  no discriminator. The weights are given as numbers here: `override` sets a number given for a string field as its
  text (it raised TypeError before)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from xlm_jax import parallel
  from xlm_jax.train import nmt
  from xlm_jax.train.state import strip_boxes
  c = tiny_config(**{**UNMT, "nmt.bt_steps": "", "nmt.lambda_dis": 0.5, "nmt.dis_hidden_dim": 16})
  task, _ = nmt.build_task(c, str(tmp_path), parallel.make_mesh(c.mesh.to_dict()))
  params = strip_boxes(task.init_params(jax.random.key(0)))
  assert sorted(params) == ["decoder", "discriminator", "encoder"]
  assert task.meta["discriminator"] == {"n_langs": 2, "hidden_dim": 16, "n_layers": 3, "dropout": 0.0}
  batch = jax.tree.map(jnp.asarray, task.batches.batch(0))
  assert sorted(batch) == ["ae"]
  totals = task.loss.weights(batch)
  assert totals["dis"] == totals["adv"] == np.sum(np.asarray(batch["ae"]["src_segments"]) > 0)
  sums = task.loss.sums(params, batch, jax.random.key(1), False)
  assert float(sums["dis"].weight) == float(totals["dis"])
  assert 0.2 < float(sums["dis"].correct / sums["dis"].weight) < 0.8  # two languages, an untrained discriminator

  def norms(objective):
    grads = jax.grad(lambda p: task.loss.sums(p, batch, jax.random.key(1), False)[objective].loss)(params)
    return {part: float(jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(tree)))) for part, tree in grads.items()}

  dis, adv = norms("dis"), norms("adv")
  assert dis["discriminator"] > 0 and dis["encoder"] == 0 and dis["decoder"] == 0, dis
  assert adv["encoder"] > 0 and adv["discriminator"] == 0 and adv["decoder"] == 0, adv
  assert float(task.loss.lambdas["adv"](10)) == 0.5 and float(task.loss.lambdas["dis"](10)) == 1.0

  off = tiny_config(**{**UNMT, "nmt.bt_steps": ""})
  task_off, _ = nmt.build_task(off, str(tmp_path / "off"), parallel.make_mesh(off.mesh.to_dict()))
  assert sorted(strip_boxes(task_off.init_params(jax.random.key(0)))) == ["decoder", "encoder"]
  with pytest.raises(Exception, match="ae_steps is empty"):
    bad = tiny_config(**{**UNMT, "nmt.ae_steps": "", "nmt.lambda_dis": 1})
    nmt.build_task(bad, str(tmp_path / "bad"), parallel.make_mesh(bad.mesh.to_dict()))


def test_output_vocabulary_per_language_comes_from_its_monolingual_text(tmp_path):
  """`config.nmt.output_vocab_min_count`: language l may produce the words seen that often in its monolingual
  training store (and `</s>`); back-translation decodes under that mask inside the jitted loss. Off (0): no mask."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from xlm_jax import parallel
  from xlm_jax.train import nmt
  from xlm_jax.train.state import strip_boxes
  c = tiny_config(**{**UNMT, "nmt.output_vocab_min_count": 2})
  task, context = nmt.build_task(c, str(tmp_path), parallel.make_mesh(c.mesh.to_dict()))
  mask, tok = context["vocab_mask"], context["tokenizer"]
  assert mask.shape == (2, context["decoder_config"].vocab_size) and mask[:, tok.eos_id].all()
  assert not mask[:, tok.pad_id].any() and 0 < mask.sum() < mask.size and (mask[0] != mask[1]).any()
  batch = jax.tree.map(jnp.asarray, task.batches.batch(0))
  assert "bt" in batch
  sums = task.loss.sums(strip_boxes(task.init_params(jax.random.key(0))), batch, jax.random.key(1), False)
  assert np.isfinite(float(sums["bt"].loss)) and float(sums["bt"].weight) > 0
  off = tiny_config(**UNMT)
  assert nmt.build_task(off, str(tmp_path / "off"), parallel.make_mesh(off.mesh.to_dict()))[1]["vocab_mask"] is None


def test_direction_corpora_feed_only_their_own_mt_direction(tmp_path):
  """`config.nmt.direction_corpora` (e.g. word-by-word pseudo-parallel text, one folder per direction): the
  training pairs of xb->xa come from `<folder>/xb-xa`, those of xa->xb still from the main corpus; a folder
  naming no MT direction is refused."""
  import jax
  import numpy as np
  from xlm_jax import parallel
  from xlm_jax.errors import UserError
  from xlm_jax.train import nmt
  folder = tmp_path / "directions" / "xb-xa"
  folder.mkdir(parents=True)
  marker = "Koha koha koha."
  (folder / "train.xa-xb.xa").write_text("".join(f"Nana puno hu koyoko {i}.\n" for i in range(200)))
  (folder / "train.xa-xb.xb").write_text((marker + "\n") * 200)
  c = tiny_config(**{**UNMT, "nmt.ae_steps": "", "nmt.bt_steps": "", "nmt.mt_steps": "xa-xb,xb-xa",
                     "nmt.direction_corpora": str(tmp_path / "directions")})
  task, context = nmt.build_task(c, str(tmp_path / "run"), parallel.make_mesh(c.mesh.to_dict()))
  tok, lang2id = context["tokenizer"], {l: i for i, l in enumerate(context["languages"])}
  allowed = set(tok.encode(marker, "xb")) | {tok.eos_id, tok.pad_id}
  own, main = 0, 0
  for step in range(4):
    b = jax.tree.map(np.asarray, task.batches.batch(step)["mt"])
    for src, langs in zip(b["src_tokens"], b["src_langs"]):
      real = langs[src != tok.pad_id]
      if real.size and real[0] == lang2id["xb"]:
        assert set(src.tolist()) <= allowed
        own += 1
      elif real.size:
        main += 1
  assert own and main
  c.nmt.unsupervised = True     # xa-xb would read the corpus's sentence pairs
  with pytest.raises(UserError, match=r"unsupervised=True, yet MT direction\(s\) \['xa-xb'\]"):
    nmt.build_task(c, str(tmp_path / "run1"), parallel.make_mesh(c.mesh.to_dict()))
  c.nmt.mt_steps = "xb-xa"       # only the direction with its own (pseudo-parallel) folder: allowed
  assert sorted(nmt.build_task(c, str(tmp_path / "run1b"), parallel.make_mesh(c.mesh.to_dict()))[0].eval_sets) == [
      "mt_xb-xa"]
  c.nmt.unsupervised = False
  c.nmt.direction_corpora = str(tmp_path / "nowhere")
  with pytest.raises(UserError, match="does not exist"):
    nmt.build_task(c, str(tmp_path / "run2"), parallel.make_mesh(c.mesh.to_dict()))
  c.nmt.direction_corpora = str(tmp_path / "directions")
  c.nmt.mt_steps = "xa-xb"
  with pytest.raises(UserError, match="no folder for the MT directions"):
    nmt.build_task(c, str(tmp_path / "run3"), parallel.make_mesh(c.mesh.to_dict()))
