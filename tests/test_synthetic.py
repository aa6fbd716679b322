"""Tests of the synthetic multilingual corpus (xlm_jax.data.synthetic)."""
from __future__ import annotations

import collections
import hashlib
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from xlm_jax.data import synthetic as S
from xlm_jax.errors import UserError

SMALL = dict(n_mono=1500, n_para=800, n_valid=150, n_test=150)


def _lines(path: Path) -> list[str]:
  data = path.read_bytes()
  assert data.endswith(b"\n") or not data, f"{path.name} is not newline-terminated"
  return data.decode("utf-8").splitlines()  # raises on invalid UTF-8


def _tokens(sentence: str) -> list[str]:
  return [w.strip(".,?").lower() for w in sentence.split()]


def _dir_bytes(path: Path) -> dict[str, bytes]:
  return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> S.CorpusInfo:
  return S.generate_corpus(tmp_path_factory.mktemp("small"), seed=3, **SMALL)


@pytest.fixture(scope="module")
def default_corpus(tmp_path_factory) -> tuple[S.CorpusInfo, float]:
  out = tmp_path_factory.mktemp("default")
  start = time.perf_counter()
  info = S.generate_corpus(out)
  return info, time.perf_counter() - start


def _concepts(sentences: list[list[str]], lang: str) -> list[collections.Counter]:
  """Per tokenised sentence, the multiset of (category, concept) its words express, via the lexicon."""
  lex = S.lexicon(lang)
  index = {form: (category, concept) for category in S.CATEGORIES for concept in range(len(lex.stems[category]))
           for form in lex.forms(category, concept)}
  return [collections.Counter(index[w] for w in s if w in index) for s in sentences]


def _simple_meaning(question: bool = False) -> S.Meaning:
  """'The (frequent animate noun) sees the (object)' with distinct concepts, no adjectives, no location."""
  clause = S.Clause(agent=S.NounPhrase(3), verb=2, tense="past", patient=S.NounPhrase(70))
  return S.Meaning((clause,), (), question)


# ---------------------------------------------------------------------------------------------------------------
# Languages and rendering


def test_languages_and_specs():
  assert S.LANGUAGES == ("xa", "xb", "xc")
  assert {S.language_spec(lang).word_order for lang in S.LANGUAGES} == {"SVO", "SOV", "VSO"}
  assert S.language_codes(5) == ("xa", "xb", "xc", "xd", "xe")
  for bad in ("", "x", "XA", "x-a", "xabc", "é1"):
    with pytest.raises(UserError):
      S.language_spec(bad)


def test_verb_position_differs_across_languages():
  meaning = _simple_meaning()
  orders = {}
  for lang in S.LANGUAGES:
    lex = S.lexicon(lang)
    tokens = _tokens(S.render(meaning, lang))
    position = {}
    for role, category, concept in (("S", "noun", 3), ("V", "verb", 2), ("O", "noun", 70)):
      hits = [i for i, w in enumerate(tokens) if w in lex.forms(category, concept)]
      assert len(hits) == 1, (lang, role, tokens)
      position[role] = hits[0]
    orders[lang] = "".join(sorted(position, key=position.get))
  assert orders == {"xa": "SVO", "xb": "SOV", "xc": "VSO"}


def test_sentence_surface_form():
  for lang in S.LANGUAGES:
    statement = S.render(_simple_meaning(), lang)
    question = S.render(_simple_meaning(question=True), lang)
    assert statement[0].isupper() and statement.endswith(".") and "\n" not in statement
    assert question[0].isupper() and question.endswith("?")
    assert statement[:-1] != question[:-1]  # questions are marked by more than the punctuation
    assert S.render(_simple_meaning(), lang) == statement  # deterministic


def test_morphology_makes_words_predictable():
  # xc: adjectives carry the class-and-number suffix of their noun (animate class 0 vs place class 2).
  lex = S.lexicon("xc")
  animate = S.Meaning((S.Clause(S.NounPhrase(0, False, (5,)), 40),))
  place_agent = S.Meaning((S.Clause(S.NounPhrase(S.N_NOUNS - 1, True, (5,)), 40),))
  adj_animate = next(w for w in _tokens(S.render(animate, "xc")) if w in lex.forms("adjective", 5))
  adj_place = next(w for w in _tokens(S.render(place_agent, "xc")) if w in lex.forms("adjective", 5))
  assert adj_animate != adj_place
  noun_animate = lex.noun_table[0][S.AGENT][False]
  noun_place = lex.noun_table[S.N_NOUNS - 1][S.AGENT][True]
  assert adj_animate[-2:] == noun_animate[-2:] and adj_place[-3:] == noun_place[-3:]
  # xa: the verb agrees with the number of its subject.
  sg = S.Meaning((S.Clause(S.NounPhrase(0, False), 40),))
  pl = S.Meaning((S.Clause(S.NounPhrase(0, True), 40),))
  assert S.render(sg, "xa").split()[1] != S.render(pl, "xa").split()[1]
  # xb: the patient carries a case suffix, so agent and patient forms of one noun differ.
  assert S.lexicon("xb").noun_table[7][S.AGENT][False] != S.lexicon("xb").noun_table[7][S.PATIENT][False]


def test_rendering_is_injective_and_only_cognates_are_shared():
  meanings = S.sample_meanings(np.random.default_rng(11), 4000)
  n_distinct = len(set(meanings))
  types, cognates = {}, {}
  for lang in S.language_codes(4):
    sentences = [S.render(m, lang) for m in meanings]
    assert len(set(sentences)) == n_distinct, lang
    types[lang] = {w for s in sentences for w in _tokens(s)}
    lex = S.lexicon(lang)
    cognates[lang] = {f for c in S.CONTENT_CATEGORIES for r in range(len(lex.stems[c])) if S.is_cognate(c, r)
                      for f in lex.forms(c, r)}
  for a, b in itertools.combinations(types, 2):
    shared = types[a] & types[b]
    accidental = shared - (cognates[a] & cognates[b])
    assert len(accidental) / min(len(types[a]), len(types[b])) < 0.02, (a, b, sorted(accidental)[:20])
  # cognate stems really are shared: xb and xc use xa's stem for most cognate concepts
  for lang in ("xb", "xc"):
    same = [S.lexicon(lang).stems[c][r] == S.lexicon("xa").stems[c][r] for c in S.CONTENT_CATEGORIES
            for r in range(len(S.lexicon("xa").stems[c])) if S.is_cognate(c, r)]
    assert np.mean(same) > 0.9, lang


def test_content_words_follow_from_their_neighbours():
  """Topics and selectional restrictions: what makes a masked noun or verb predictable from the sentence."""
  clauses = [c for m in S.sample_meanings(np.random.default_rng(5), 4000) for c in m.clauses]
  topic = lambda concept: concept % S.N_TOPICS
  same_topic = np.mean([topic(c.agent.noun) == topic(c.verb) for c in clauses])
  assert same_topic > 0.7  # 1/8 if they were independent
  objects = [c for c in clauses if c.patient is not None and c.patient.noun >= S.N_ANIMATE]
  selected = np.mean([((c.patient.noun - S.N_ANIMATE) // S.N_TOPICS) % S.N_VERB_CLASSES
                      == (c.verb // S.N_TOPICS) % S.N_VERB_CLASSES for c in objects])
  assert selected > 0.8  # 1/3 without selection
  # and a masked verb is far more predictable from its agent than from word frequencies alone
  pairs = collections.Counter((c.agent.noun, c.verb) for c in clauses)
  by_agent = collections.defaultdict(collections.Counter)
  for (agent, verb), n in pairs.items():
    by_agent[agent][verb] += n
  given_agent = sum(max(v.values()) for v in by_agent.values()) / len(clauses)
  unigram = max(collections.Counter(c.verb for c in clauses).values()) / len(clauses)
  assert given_agent > 2 * unigram, (given_agent, unigram)


def test_output_is_pinned(tmp_path):
  """Same bytes on every machine and Python/numpy version. If this fails after an intended change of the
  generator, bump GENERATOR_VERSION and update the pinned values."""
  assert S.GENERATOR_VERSION == 2
  assert [S.render(_simple_meaning(), lang) for lang in S.LANGUAGES] == [
      "Delan daluta lanpun.", "Tuk lanpunet getrøn.", "Saa koolee hukomni lanpunka."]
  assert [S.render(_simple_meaning(question=True), lang) for lang in S.LANGUAGES] == [
      "Ka delan daluta lanpun?", "Tuk lanpunet getrøn nø?", "Saa kooleeko hukomni lanpunka?"]
  S.generate_corpus(tmp_path, seed=7, n_mono=50, n_para=50, n_valid=10, n_test=10)
  files = json.loads((tmp_path / S.MANIFEST_NAME).read_text(encoding="utf-8"))["files"]
  assert files["train.xa"]["sha256"].startswith("b3d014f2adb3b0ce")
  assert files["valid.xb"]["sha256"].startswith("3b831d4cfd9cd436")
  assert files["test.xb-xc.xc"]["sha256"].startswith("2e0de3418d7fe03a")
  assert hashlib.sha256((tmp_path / "train.xa").read_bytes()).hexdigest() == files["train.xa"]["sha256"]


def test_lexicon_shape():
  for lang in S.language_codes(4):
    lex = S.lexicon(lang)
    for category in S.CATEGORIES:
      assert len(set(lex.stems[category])) == len(lex.stems[category])
    frequent, rare = lex.stems["noun"][:10], lex.stems["noun"][-50:]
    assert np.mean([len(w) for w in frequent]) < np.mean([len(w) for w in rare])  # law of abbreviation


def test_invalid_meanings_rejected():
  good = _simple_meaning()
  bad = [
      S.Meaning(()),
      S.Meaning((good.clauses[0],) * 2),  # missing conjunction
      S.Meaning((good.clauses[0]._replace(verb=S.N_VERBS),)),
      S.Meaning((good.clauses[0]._replace(tense="pluperfect"),)),
      S.Meaning((good.clauses[0]._replace(agent=S.NounPhrase(1, False, (), 3)),)),  # numeral on a singular
      S.Meaning((good.clauses[0]._replace(agent=S.NounPhrase(True)),)),  # bool is not a noun id
  ]
  for meaning in bad:
    with pytest.raises(UserError):
      S.render(meaning, "xa")
  with pytest.raises(UserError):
    S.render(good, "zz1")


# ---------------------------------------------------------------------------------------------------------------
# Meaning sampler


def test_sample_meanings_contract():
  a = S.sample_meanings(np.random.default_rng(0), 600)
  b = S.sample_meanings(np.random.default_rng(0), 100)
  assert a[:100] == b
  assert a != S.sample_meanings(np.random.default_rng(1), 600)
  for m in a:
    assert len(m.conjunctions) == len(m.clauses) - 1
    assert not m.question or len(m.clauses) == 1
    for c in m.clauses:
      assert (c.patient is not None) == S.is_transitive(c.verb)
      assert c.agent.noun < S.N_ANIMATE
      for np_ in (c.agent, c.patient, c.location and c.location.place):
        if np_:
          assert np_.numeral is None or np_.plural
          assert list(np_.adjectives) == sorted(set(np_.adjectives))
  counts = collections.Counter(c.agent.noun for m in a for c in m.clauses)
  # Zipf-like, not uniform (each topic has its own Zipf curve, which flattens the overall one)
  assert counts[0] > 2 * max(counts[r] for r in range(40, S.N_ANIMATE))


def test_word_frequencies_are_zipf_like(small):
  counts = collections.Counter(w for line in _lines(small.mono[("train", "xb")]) for w in _tokens(line))
  freqs = np.array(sorted(counts.values(), reverse=True)[:300], dtype=float)
  slope = np.polyfit(np.log(np.arange(1, len(freqs) + 1)), np.log(freqs), 1)[0]
  assert -1.6 < slope < -0.5, slope


# ---------------------------------------------------------------------------------------------------------------
# Corpus files


def test_layout_and_line_counts(small):
  out = small.out_dir
  expected = {"train": SMALL["n_mono"], "valid": SMALL["n_valid"], "test": SMALL["n_test"]}
  expected_para = {"train": SMALL["n_para"], "valid": SMALL["n_valid"], "test": SMALL["n_test"]}
  assert small.pairs == (("xa", "xb"), ("xa", "xc"), ("xb", "xc"))
  names = set()
  for split in S.SPLITS:
    for lang in S.LANGUAGES:
      path = out / f"{split}.{lang}"
      assert small.mono[(split, lang)] == path
      assert len(_lines(path)) == expected[split] == small.line_counts[path.name]
      names.add(path.name)
    for l1, l2 in small.pairs:
      p1, p2 = out / f"{split}.{l1}-{l2}.{l1}", out / f"{split}.{l1}-{l2}.{l2}"
      assert small.para[(split, l1, l2)] == (p1, p2)
      assert len(_lines(p1)) == len(_lines(p2)) == expected_para[split]
      names |= {p1.name, p2.name}
  manifest = json.loads((out / S.MANIFEST_NAME).read_text(encoding="utf-8"))
  assert set(manifest["files"]) == names
  assert manifest["config"]["seed"] == 3 and manifest["config"]["version"] == S.GENERATOR_VERSION
  assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary leftovers
  for name in names:
    lines = _lines(out / name)
    assert all(line and line == line.strip() for line in lines)
    lengths = [len(line.split()) for line in lines]
    if name.startswith("train"):
      assert 9 <= np.mean(lengths) <= 14 and np.median(lengths) >= 5, (name, np.mean(lengths))


def test_non_ascii_and_utf8(small):
  non_ascii = {lang: any(ord(ch) > 127 for line in _lines(small.mono[("train", lang)]) for ch in line)
               for lang in S.LANGUAGES}
  assert non_ascii["xb"] and non_ascii["xc"] and not non_ascii["xa"]


def test_parallel_lines_are_translations(small):
  for l1, l2 in small.pairs:
    p1, p2 = small.para[("train", l1, l2)]
    a, b = _lines(p1), _lines(p2)
    assert len(a) == len(b)
    assert sum(x == y for x, y in zip(a, b)) == 0
  # Monolingual files are independent draws, not translations of the parallel data or of each other.
  xa_mono = set(_lines(small.mono[("train", "xa")]))
  xa_para = _lines(small.para[("train", "xa", "xb")][0])
  assert sum(line in xa_mono for line in xa_para) < 0.1 * len(xa_para)


def test_held_out_filter():
  # Collisions between random meanings are rare (~0.2 %), so exercise the filter with a stream that repeats the
  # training meanings exactly: the first chunk is all rejected and the result comes from later chunks.
  train = S.sample_meanings(S._stream(0, "t"), 256)
  taken = set(train)
  held_out = S._draw_held_out(S._stream(0, "t"), 300, taken)
  assert len(held_out) == len(set(held_out)) == 300
  assert not set(held_out) & set(train)
  assert set(held_out) <= taken  # recorded, so the next split cannot reuse them


@pytest.mark.parametrize("corpus", ["small", "default_corpus"])
def test_held_out_meanings_do_not_overlap_train(corpus, request):
  small = request.getfixturevalue(corpus)
  small = small[0] if isinstance(small, tuple) else small
  for lang in S.LANGUAGES:
    train_files = [small.mono[("train", lang)]] + [
        paths[pair.index(lang)] for (split, *pair), paths in small.para.items() if split == "train" and lang in pair]
    train = set(itertools.chain.from_iterable(_lines(p) for p in train_files))
    held_out = {}
    for split in ("valid", "test"):
      files = [small.mono[(split, lang)]] + [
          paths[pair.index(lang)] for (s, *pair), paths in small.para.items() if s == split and lang in pair]
      held_out[split] = list(itertools.chain.from_iterable(_lines(p) for p in files))
      assert not train & set(held_out[split]), (lang, split)
    assert not set(held_out["valid"]) & set(held_out["test"])
    assert len(set(held_out["valid"])) == len(held_out["valid"])


def test_deterministic_and_seed_sensitive(small, tmp_path):
  again = S.generate_corpus(tmp_path / "again", seed=3, **SMALL)
  assert not again.reused
  assert _dir_bytes(again.out_dir) == _dir_bytes(small.out_dir)
  other = S.generate_corpus(tmp_path / "other", seed=4, **SMALL)
  a, b = _dir_bytes(other.out_dir), _dir_bytes(small.out_dir)
  assert a.keys() == b.keys()
  assert all(a[name] != b[name] for name in a)


def test_idempotent_and_regenerates_when_needed(tmp_path):
  kwargs = dict(n_mono=300, n_para=200, n_valid=50, n_test=50)
  first = S.generate_corpus(tmp_path, seed=1, **kwargs)
  assert not first.reused
  stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
  time.sleep(0.01)
  second = S.generate_corpus(tmp_path, seed=1, **kwargs)
  assert second.reused and second.line_counts == first.line_counts and second.mono == first.mono
  assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamps
  # A missing file or a different config means a rewrite.
  (tmp_path / "valid.xb").unlink()
  assert not S.generate_corpus(tmp_path, seed=1, **kwargs).reused
  assert len(_lines(tmp_path / "valid.xb")) == 50
  assert not S.generate_corpus(tmp_path, seed=1, **{**kwargs, "n_test": 60}).reused
  assert len(_lines(tmp_path / "test.xb")) == 60


def test_interrupted_generation_leaves_no_complete_looking_corpus(tmp_path, monkeypatch):
  kwargs = dict(n_mono=100, n_para=100, n_valid=20, n_test=20)
  S.generate_corpus(tmp_path, seed=1, **kwargs)
  real_replace, calls = os.replace, []

  def flaky_replace(src, dst):
    calls.append(dst)
    if len(calls) == 3:
      raise OSError("disk full")
    real_replace(src, dst)

  monkeypatch.setattr(os, "replace", flaky_replace)
  with pytest.raises(OSError):
    S.generate_corpus(tmp_path, seed=2, **kwargs)
  monkeypatch.setattr(os, "replace", real_replace)
  assert not (tmp_path / S.MANIFEST_NAME).exists()
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
  info = S.generate_corpus(tmp_path, seed=2, **kwargs)
  assert not info.reused and (tmp_path / S.MANIFEST_NAME).exists()


def test_extra_languages_and_pairs(tmp_path):
  langs = S.language_codes(5)
  info = S.generate_corpus(tmp_path, languages=langs, n_mono=50, n_para=40, n_valid=10, n_test=10)
  assert len(info.pairs) == 10
  sub = S.generate_corpus(tmp_path / "sub", pairs=[("xc", "xa")], n_mono=50, n_para=40, n_valid=10, n_test=10)
  assert sub.pairs == (("xa", "xc"),) and (tmp_path / "sub" / "train.xa-xc.xc").exists()
  assert not (tmp_path / "sub" / "train.xa-xb.xa").exists()
  for bad in (dict(languages=("xa", "xa")), dict(pairs=[("xa", "xq")]), dict(pairs=[("xa", "xa")]),
              dict(n_mono=-1), dict(seed=-5), dict(languages=("xa", "Bad"))):
    with pytest.raises(UserError):
      S.generate_corpus(tmp_path / "bad", **{**dict(n_mono=10, n_para=10, n_valid=2, n_test=2), **bad})


# ---------------------------------------------------------------------------------------------------------------
# Default corpus: speed, sizes, learnability for translation


def test_default_corpus_sizes_and_reuse(default_corpus):
  """Sizes, and a second call reuses the files (no wall-clock bound: the CPU is shared; the generation time is
  reported by benchmarks/quickstart_demo.py, not asserted)."""
  info, _ = default_corpus
  assert info.line_counts["train.xa"] == 20000 and info.line_counts["train.xb-xc.xc"] == 10000
  assert info.line_counts["valid.xc"] == info.line_counts["test.xa-xc.xa"] == 500
  before = {p.name: p.stat().st_mtime_ns for p in info.out_dir.iterdir()}
  assert S.generate_corpus(info.out_dir).reused
  assert {p.name: p.stat().st_mtime_ns for p in info.out_dir.iterdir()} == before


def test_translation_is_learnable(default_corpus):
  info, _ = default_corpus
  for (split, l1, l2), (p1, p2) in info.para.items():
    if split != "train":
      continue
    tokens1 = [_tokens(s) for s in _lines(p1)]
    tokens2 = [_tokens(s) for s in _lines(p2)]
    # 1. Both sides of every pair express the same multiset of concepts (read off any inflected form).
    assert _concepts(tokens1, l1) == _concepts(tokens2, l2), (l1, l2)
    side1, side2 = [set(s) for s in tokens1], [set(s) for s in tokens2]
    # 2. Without the lexicon: most frequent word types have a word type on the other side that is in every one of
    #    their sentence pairs, in both directions -- what a word aligner or an NMT model can pick up. (Not all:
    #    a feature marked on one word in one language can be marked elsewhere in the other, e.g. subject number.)
    side1, side2 = side1[:4000], side2[:4000]
    for src, tgt in ((side1, side2), (side2, side1)):
      freq = collections.Counter(w for s in src for w in s)
      cooc: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
      for s, t in zip(src, tgt):
        for w in s:
          if freq[w] >= 30:
            cooc[w].update(t)
      best = [max(cooc[w].values()) / freq[w] for w in cooc]
      assert len(best) > 100 and np.median(best) == 1.0 and np.mean(best) > 0.8, (l1, l2, np.mean(best))
