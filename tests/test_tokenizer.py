"""The shared BPE tokenizer: XLM special ids, framing, language tags, balanced sampling, bundle round trip."""
import collections
import gzip
import os

import pytest

from xlm_jax.errors import UserError
from xlm_jax.tokenizer import (EOS_ID, MASK_ID, PAD_ID, UNK_ID, LanguageEncoder, balanced_sample, frame,
                               language_sampling_probs, register_tokenizer_kind, tokenizer_from_state,
                               train_sentencepiece)


@pytest.fixture(scope="module")
def tok(corpus_dir):
  files = {l: [os.path.join(corpus_dir, f"train.{l}")] for l in ("xa", "xb", "xc")}
  return train_sentencepiece(files, 300, alpha=0.5, n_sentences=3000, seed=0)


def test_special_ids_follow_the_xlm_dictionary(tok):
  assert [tok.id_to_piece(i) for i in range(6)] == ["<s>", "</s>", "<pad>", "<unk>", "<special0>", "<mask>"]
  assert (tok.eos_id, tok.pad_id, tok.unk_id, tok.mask_id) == (EOS_ID, PAD_ID, UNK_ID, MASK_ID) == (1, 2, 3, 5)
  assert tok.vocab_size == 300


def test_framing_and_mask_literal(tok, corpus_dir):
  line = open(os.path.join(corpus_dir, "valid.xa"), encoding="utf-8").readline().strip()
  ids = tok.encode(line)
  assert frame(ids) == [1, *ids, 1]
  assert tok.decode(ids) == line
  words = line.split()
  masked = " ".join(words[:1] + ["<mask>"] + words[2:])
  assert MASK_ID in tok.encode(masked)


def test_language_tags_are_inserted_by_id_only(tok):
  tag = tok.lang_tag_id("xb")
  assert tok.id_to_piece(tag) == "<lang:xb>"
  assert tag not in tok.encode("<lang:xb> hello")
  with pytest.raises(UserError, match="no language 'zz'"):
    tok.lang_tag_id("zz")


def test_state_round_trip_is_identical(tok):
  again = tokenizer_from_state(tok.state())
  assert again.fingerprint() == tok.fingerprint()
  assert again.encode("Bogu rin delans wogi.") == tok.encode("Bogu rin delans wogi.")


class _LowercasingTokenizer:
  """A tokenizer kind of a user's own: lowercases, then encodes with a sentencepiece tokenizer it wraps."""

  def __init__(self, inner):
    self.inner = inner

  def encode(self, text, lang=None):
    return self.inner.encode(text.lower(), lang)

  def state(self):
    return {"kind": "test_lowercasing", "inner": self.inner.state()}


def _lowercasing_from_state(state):
  return _LowercasingTokenizer(tokenizer_from_state(state["inner"]))


def test_a_kind_registered_at_run_time_reaches_a_fresh_worker_with_the_encoder(tok):
  """A spawned preparation worker knows only the built-in kinds: the pickled LanguageEncoder carries the factory of a
  kind registered at run time and registers it there (here: after dropping it from this process's registry, as
  a fresh interpreter would not have it)."""
  import pickle
  from xlm_jax import tokenizer as tokenizer_lib
  register_tokenizer_kind("test_lowercasing", _lowercasing_from_state)
  try:
    blob = pickle.dumps(LanguageEncoder(_LowercasingTokenizer(tok), "xb"))
    del tokenizer_lib._EXTRA_KINDS["test_lowercasing"]
    with pytest.raises(UserError, match="unknown tokenizer kind 'test_lowercasing'"):
      tokenizer_from_state(_LowercasingTokenizer(tok).state())
    copy = pickle.loads(blob)
    assert copy("Bogu RIN delans.") == tok.encode("bogu rin delans.", "xb")
    assert isinstance(tokenizer_from_state(_LowercasingTokenizer(tok).state()), _LowercasingTokenizer)
  finally:
    tokenizer_lib._EXTRA_KINDS.pop("test_lowercasing", None)


def test_sampling_probabilities():
  p = language_sampling_probs({"big": 900, "small": 100}, 0.5)
  assert p["big"] / p["small"] == pytest.approx(3.0)
  assert language_sampling_probs({"a": 5, "b": 500}, 0.0)["a"] == pytest.approx(0.5)
  with pytest.raises(UserError, match="no sentences"):
    language_sampling_probs({"a": 0, "b": 5}, 0.5)


def test_balanced_sample_upsamples_small_languages(tmp_path):
  big, small = tmp_path / "big.txt.gz", tmp_path / "small.txt"
  with gzip.open(big, "wt", encoding="utf-8") as f:
    f.writelines(f"big {i}\n" for i in range(900))
  small.write_text("".join(f"small {i}\n" for i in range(100)), encoding="utf-8")
  lines = list(balanced_sample({"big": [big], "small": [small]}, 0.5, 400, seed=0))
  counts = collections.Counter(l.split()[0] for l in lines)
  assert counts["big"] == 300 and counts["small"] == 100  # 3:1 = (900/100)**0.5
  assert len(set(lines)) < len(lines) or counts["small"] <= 100
  lines_alpha1 = list(balanced_sample({"big": [big], "small": [small]}, 1.0, 400, seed=0))
  assert collections.Counter(l.split()[0] for l in lines_alpha1)["small"] == 40
  # alpha 0: uniform over languages; the small one repeats lines
  lines0 = list(balanced_sample({"big": [big], "small": [small]}, 0.0, 1000, seed=0))
  c0 = collections.Counter(l.split()[0] for l in lines0)
  assert c0["small"] == 500 and len({l for l in lines0 if l.startswith("small")}) <= 100


def test_missing_file_is_named(tmp_path):
  with pytest.raises(UserError, match="nope.txt"):
    train_sentencepiece({"xa": [tmp_path / "nope.txt"]}, 100)
