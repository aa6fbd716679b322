"""The XLM BPE tokenizer of imported models gives exactly transformers' XLMTokenizer ids (en, fr, de, ro, ru, el).

The vocabularies are learnt here (no network): a small fastBPE-style learner over a few sentences per language,
once on lowercased/accent-stripped words and once on cased words. Helpers are imported by the converter tests.
"""
from __future__ import annotations

import collections
import json
import os

import pytest

from xlm_jax.errors import UserError
from xlm_jax.interop.xlm_bpe import (DEFAULT_SPECIALS, XLMBPETokenizer, parse_merges, xlm_dico_to_vocab)
from xlm_jax.tokenizer import frame, tokenizer_from_state

TRAIN = {
    "en": ["The quick brown fox jumps over the lazy dog.", "It's Mr. Smith's second car, isn't it?",
           "We were there in 2019 and they said: \"hello world\" to everyone.", "Translation models need data."],
    "fr": ["L'été dernier, nous sommes allés à Paris avec les enfants.", "C'était une très belle journée d'août.",
           "Qu'est-ce que tu en penses ? Je ne sais pas.", "Les modèles de traduction apprennent vite."],
    "de": ["Die Straße war über hundert Meter lang.", "Jürgen und Günther essen Äpfel im Großraum.",
           "Das Mädchen läuft schnell nach Hause.", "Übersetzungsmodelle brauchen viele Daten."],
    "ro": ["Şeful a spus că ţara este frumoasă.", "Orașul și țara sunt în regulă, mulțumesc.",
           "Învățăm să traducem din română în engleză.", "Aceasta este o propoziție în limba română."],
    "ru": ["Съешь же ещё этих мягких французских булок, да выпей чаю.", "Москва является столицей России.",
           "Мы изучаем машинный перевод каждый день.", "Это очень хорошая модель."],
    "el": ["Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο.", "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας.",
           "Μαθαίνουμε μηχανική μετάφραση κάθε μέρα.", "Αυτό είναι ένα πολύ καλό μοντέλο;"],
}
# Sentences with unseen words, unknown characters, punctuation Moses and the normaliser treat specially.
TEST = {
    "en": ["Hello World! It's Mr. Smith's 2nd car—isn't it?  (yes)  [really] 3.14% of $5...",
           "Quotes “curly” and ‘single’, an e-mail: a.b@c.de, tabs\tand\u00a0nbsp, zero\u200bwidth.",
           "Full-width：punctuation，and。stops．numbers１２３ and emoji 😀 plus İstanbul Ǆ ß.",
           "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG"],
    "fr": ["L'été dernier, j'ai vu « les Misérables » à l'Opéra ; c'était génial !",
           "Aujourd'hui, qu'est-ce qu'on fait ? Rendez-vous à 20 h 30."],
    "de": ["Größere Übungen: Straße, Fußgänger & Äpfel — „Anführungszeichen“ kosten 1.000,50 €.",
           "Das ist z.B. ein Beispiel, d.h. ein Test."],
    "ro": ["Şeful şi ţara (sedilă) față de Șeful și țara (virgulă); încă ÎNCĂ Ăsta Ânt.",
           "Învățământul românesc: 15% din elevi."],
    "ru": ["Съешь же ещё этих мягких французских булок, да выпей чаю. Ёлка №5 «кавычки».",
           "Москва — столица России; Йошкар-Ола тоже город!"],
    "el": ["Η γρήγορη καφέ αλεπού πηδάει — Ά Έ Ή Ί Ό Ύ Ώ ΐ ΰ; «εισαγωγικά»", "Ελληνικά: άλφα, βήτα, γάμμα."],
}


def learn_bpe(words: collections.Counter, n_merges: int) -> list[tuple[str, str]]:
  """A tiny fastBPE-style learner: merge the most frequent adjacent pair, `</w>` glued to the last character."""
  corpus = {tuple(w[:-1]) + (w[-1] + "</w>",): c for w, c in words.items() if w}
  merges: list[tuple[str, str]] = []
  for _ in range(n_merges):
    pairs: collections.Counter = collections.Counter()
    for symbols, count in corpus.items():
      for pair in zip(symbols, symbols[1:]):
        pairs[pair] += count
    if not pairs:
      break
    best = max(pairs, key=lambda p: (pairs[p], p))
    merges.append(best)
    merged = {}
    for symbols, count in corpus.items():
      out, i = [], 0
      while i < len(symbols):
        if i < len(symbols) - 1 and (symbols[i], symbols[i + 1]) == best:
          out.append(symbols[i] + symbols[i + 1])
          i += 2
        else:
          out.append(symbols[i])
          i += 1
      merged[tuple(out)] = merged.get(tuple(out), 0) + count
    corpus = merged
  return merges


def build_bpe(lowercase: bool, n_merges: int = 160, drop_chars: str = "qQ") -> tuple[list[str], list[tuple[str, str]]]:
  """(vocab by id, merges) learnt on TRAIN; characters in `drop_chars` are left out so that they become <unk>."""
  pre = XLMBPETokenizer(list(DEFAULT_SPECIALS), [], do_lowercase_and_remove_accent=lowercase)
  words: collections.Counter = collections.Counter()
  for lang, sentences in TRAIN.items():
    for s in sentences:
      words.update(pre.pretokenize(s, lang))
  merges = learn_bpe(words, n_merges)
  chars = sorted({c for w in words for c in w} - set(drop_chars))
  pieces = list(DEFAULT_SPECIALS)
  for c in chars:
    pieces += [c, c + "</w>"]
  pieces += [a + b for a, b in merges]
  return list(dict.fromkeys(pieces)), merges


def write_hf_tokenizer_files(directory: str, vocab: list[str], merges: list[tuple[str, str]],
                             lowercase: bool | None = None) -> None:
  """vocab.json + merges.txt (+ tokenizer_config.json when `lowercase` is given), as transformers writes them."""
  with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
    json.dump({p: i for i, p in enumerate(vocab)}, f, ensure_ascii=False)
  with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
    f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
  if lowercase is not None:
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
      json.dump({"tokenizer_class": "XLMTokenizer", "do_lowercase_and_remove_accent": lowercase}, f)


def filler_vocab(size: int) -> list[str]:
  """An XLM-shaped vocabulary of exactly `size` pieces (specials, letters, then filler words)."""
  pieces = list(DEFAULT_SPECIALS)
  for c in "abcdefghijklmnopqrstuvwxyz":
    pieces += [c, c + "</w>"]
  i = 0
  while len(pieces) < size:
    pieces.append(f"w{i}</w>")
    i += 1
  return pieces[:size]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
  """{lowercase: (ours, transformers' XLMTokenizer)}, both built from the same vocab.json + merges.txt."""
  transformers = pytest.importorskip("transformers")
  out = {}
  for lowercase in (True, False):
    vocab, merges = build_bpe(lowercase)
    directory = str(tmp_path_factory.mktemp("tok"))
    write_hf_tokenizer_files(directory, vocab, merges)
    files = os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt")
    out[lowercase] = (XLMBPETokenizer.from_hf_files(*files, do_lowercase_and_remove_accent=lowercase),
                      transformers.XLMTokenizer(*files, do_lowercase_and_remove_accent=lowercase))
  return out


@pytest.fixture(params=[True, False], ids=["lowercase", "cased"])
def pair(request, pairs):
  return pairs[request.param]


def hf_ids(tok, text: str, lang: str) -> list[int]:
  # The language-aware path; transformers 5.24's public tokenize() drops `lang` (see test_hf_public_api_ignores_lang).
  return tok.convert_tokens_to_ids(tok._tokenize(text, lang=lang))


@pytest.mark.parametrize("lang", sorted(TEST))
def test_ids_equal_xlm_tokenizer(pair, lang):
  ours, theirs = pair
  for text in TEST[lang] + TRAIN[lang]:
    mine = ours.encode(text, lang)
    assert mine == hf_ids(theirs, text, lang), (lang, text, ours.tokenize(text, lang))
  # The test sentences really exercise BPE, unknown pieces and multi-piece words.
  ids = [i for t in TEST[lang] for i in ours.encode(t, lang)]
  assert len(set(ids)) > 10


def test_unknown_characters_and_merges_are_exercised(pair):
  ours, _ = pair
  ids = ours.encode("Quiz 😀", "en")
  assert ours.unk_id in ids
  assert any(len(ours.id_to_piece(i)) > 3 for i in ours.encode(TRAIN["en"][0], "en"))


def test_public_api_and_framing(pair):
  """English through transformers' public encode (special pieces split out) and the two framings."""
  ours, theirs = pair
  for text in TEST["en"] + ["a <special1> masked </s> word <unk> here"]:
    assert ours.encode(text) == theirs.encode(text, add_special_tokens=False), text
  text = TRAIN["en"][0]
  ids = ours.encode(text, "en")
  assert theirs.encode(text) == [theirs.bos_token_id, *ids, theirs.sep_token_id]  # HF: <s> X </s>
  assert frame(ids, ours.eos_id) == [1, *ids, 1]                                    # XLM: </s> X </s>
  assert ours.encode("a <mask> b")[1] == ours.mask_id == ours.encode("a <special1> b")[1] == 5


def test_hf_public_api_ignores_lang(pairs):
  """transformers 5.24 drops `lang` in tokenize(): Romanian normalisation never happens there (cased model)."""
  ours, theirs = pairs[False]
  text = "Şeful şi ţara"
  assert theirs.tokenize(text, lang="ro") == theirs.tokenize(text, lang="en")
  assert ours.encode(text, "ro") == hf_ids(theirs, text, "ro") != ours.encode(text, "en")


def test_state_round_trip_and_fingerprint(pair):
  ours, _ = pair
  state = json.loads(json.dumps(ours.state()))
  again = tokenizer_from_state(state)
  assert again.kind == "xlm_bpe" and again.fingerprint() == ours.fingerprint()
  for lang, texts in TEST.items():
    for text in texts:
      assert again.encode(text, lang) == ours.encode(text, lang)
  other = XLMBPETokenizer(ours.vocab, ours.merges,
                          do_lowercase_and_remove_accent=not ours.do_lowercase_and_remove_accent)
  assert other.fingerprint() != ours.fingerprint()


def test_decode(pair):
  ours, theirs = pair
  ids = ours.encode("The lazy dog.", "en")
  assert ours.decode(frame(ids) + [ours.pad_id]) == theirs.decode(ids)
  assert ours.decode(ids).endswith("dog .")


def test_refusals():
  vocab, merges = build_bpe(True, n_merges=20)
  tok = XLMBPETokenizer(vocab, merges)
  with pytest.raises(UserError, match="Chinese word segmenter"):
    tok.encode("你好", "zh")
  no_merges = XLMBPETokenizer(vocab, None)
  with pytest.raises(UserError, match="--codes"):
    no_merges.encode("hello", "en")
  assert no_merges.decode([1, vocab.index("a"), vocab.index("b</w>"), 1]) == "ab"
  with pytest.raises(UserError, match="no mask piece"):
    XLMBPETokenizer([p for p in vocab if p != "<special1>"], merges)
  twice = XLMBPETokenizer(vocab + ["a</w>"], merges)  # a repeated piece maps to its last id, as in transformers
  assert twice.encode("a", "en") == [len(vocab)] and twice.decode([vocab.index("a</w>")]) == "a"


def test_merges_file_quirks():
  # transformers drops the unterminated last line and keeps a two-field header as a (never matching) pair
  assert parse_merges("#version: 0.2\na b\nc d") == [("#version:", "0.2"), ("a", "b")]
  assert parse_merges("#version\na b\n") == [("a", "b")]
  assert parse_merges("a b 10\nc d 5", transformers_quirks=False) == [("a", "b"), ("c", "d")]
  assert parse_merges("a b\nc d\na b\n") == [("c", "d"), ("a", "b")]         # a repeated pair keeps its later rank


def test_xlm_dico_to_vocab_matches_transformers_converter():
  id2word = {i: w for i, w in enumerate([*DEFAULT_SPECIALS, "th@@", "e", "the", "@@", "x@@y"])}
  vocab = xlm_dico_to_vocab(id2word)
  assert vocab[:14] == list(DEFAULT_SPECIALS)
  assert vocab[14:] == ["th", "e</w>", "the</w>", "", "xy"]
  with pytest.raises(UserError, match="no id 3"):
    xlm_dico_to_vocab({0: "<s>", 1: "</s>", 2: "<pad>", 4: "x"})
