"""MLM and CLM prediction slots: 15%, 80/10/10, padding never predicted, frequency smoothing."""
import numpy as np
import pytest

from xlm_jax.data.masking import MaskingConfig, clm_rows, frequency_scores, mask_rows, mlm_slots
from xlm_jax.errors import UserError

SPECIAL = tuple(range(6))
CFG = MaskingConfig(vocab_size=1000, mask_id=5, special_ids=SPECIAL)


def mask_row(rng, tokens, eligible, cfg, slots, scores=None):
  """One row through the group masking (a group of one)."""
  return tuple(x[0] for x in mask_rows(rng, tokens[None], eligible[None], cfg, slots, scores))


def test_rates_and_modes():
  rng = np.random.default_rng(0)
  length = 128
  slots = mlm_slots(length, 0.15)
  tokens = rng.integers(6, 1000, size=length).astype(np.int32)
  eligible = np.ones(length, bool)
  eligible[100:] = False  # padding
  n_pred = n_mask = n_keep = n_rand = 0
  for _ in range(2000):
    inputs, index, targets, weights = mask_row(rng, tokens, eligible, CFG, slots)
    chosen = index[weights > 0]
    assert np.all(chosen < 100), "padding predicted"
    assert len(set(chosen.tolist())) == len(chosen)
    np.testing.assert_array_equal(targets[weights > 0], tokens[chosen])
    untouched = np.setdiff1d(np.arange(length), chosen)
    np.testing.assert_array_equal(inputs[untouched], tokens[untouched])
    n_pred += len(chosen)
    n_mask += int((inputs[chosen] == 5).sum())
    same = inputs[chosen] == tokens[chosen]
    n_keep += int(same.sum())
    n_rand += int((~same & (inputs[chosen] != 5)).sum())
  assert n_pred / 2000 / 100 == pytest.approx(0.15, abs=0.003)
  assert n_mask / n_pred == pytest.approx(0.8, abs=0.01)
  assert n_keep / n_pred == pytest.approx(0.1 + 0.1 / 994, abs=0.01)
  assert n_rand / n_pred == pytest.approx(0.1, abs=0.01)


def test_random_replacements_are_never_specials():
  rng = np.random.default_rng(1)
  cfg = MaskingConfig(vocab_size=8, mask_id=5, special_ids=SPECIAL, mask_keep_rand=(0.0, 0.0, 1.0))
  tokens = np.full((16, 64), 7, np.int32)
  inputs, index, _, weights = mask_rows(rng, tokens, np.ones((16, 64), bool), cfg, mlm_slots(64, 0.15))
  replaced = np.take_along_axis(inputs, index, 1)[weights > 0]
  assert set(replaced.tolist()) == {6, 7}


def test_random_replacements_are_never_language_tags(tmp_path):
  # issue 11, defect 4: the language tags are control tokens (ids 6.. here), which text never produces; MLM
  # must not feed them to the model as random replacements (the README says random tokens are never specials)
  import ml_collections
  from xlm_jax.tokenizer import train_sentencepiece
  from xlm_jax.train.pretrain import masking_config
  texts = {l: (lambda l=l: iter([f"{l} w{i % 37} v{i % 11} u{i % 5}" for i in range(400)])) for l in ("xa", "xb")}
  tok = train_sentencepiece(texts, 60, n_sentences=800)
  tags = {tok.lang_tag_id(l) for l in ("xa", "xb")}
  assert max(tags) < 10  # where the bug put them: right after the XLM specials, inside the old random range
  config = ml_collections.ConfigDict({"data": {"word_mask_keep_rand": "0,0,1", "word_pred": 0.15,
                                               "sample_alpha": 0.0}})
  cfg = masking_config(config, tok)
  rng = np.random.default_rng(0)
  tokens = rng.integers(10, tok.vocab_size, size=(64, 64)).astype(np.int32)
  inputs, index, _, weights = mask_rows(rng, tokens, np.ones_like(tokens, bool), cfg, mlm_slots(64, 0.15))
  replaced = set(np.take_along_axis(inputs, index, 1)[weights > 0].tolist())
  assert not replaced & tags and not replaced & set(range(6))
  assert len(replaced) > 20  # the other ids are drawn


def test_frequency_smoothing_prefers_rare_tokens():
  counts = np.zeros(10)
  counts[6], counts[7] = 10000, 1
  scores = frequency_scores(counts, 0.5, SPECIAL)
  assert scores[:6].sum() == 0
  cfg = MaskingConfig(vocab_size=10, mask_id=5, special_ids=SPECIAL, sample_alpha=0.5)
  rng = np.random.default_rng(0)
  tokens = np.array([6] * 50 + [7] * 50 + [1] * 28, np.int32)
  rare = common = 0
  for _ in range(300):
    _, index, targets, weights = mask_row(rng, tokens, np.ones(128, bool), cfg, mlm_slots(128, 0.15), scores)
    t = targets[weights > 0]
    assert not np.any(t == 1), "a special token was chosen"
    rare += int((t == 7).sum())
    common += int((t == 6).sum())
  assert rare > 5 * common


def test_clm_targets_stay_inside_segments():
  tokens = np.array([1, 10, 11, 1, 1, 20, 1, 2], np.int32)
  segments = np.array([1, 1, 1, 1, 2, 2, 2, 0], np.int32)
  inputs, index, targets, weights = clm_rows(tokens[None], segments[None])
  np.testing.assert_array_equal(inputs[0], tokens)
  np.testing.assert_array_equal(index[0], np.arange(7))
  np.testing.assert_array_equal(targets[0], tokens[1:])
  np.testing.assert_array_equal(weights[0], [1, 1, 1, 0, 1, 1, 0])


def test_bad_masking_settings():
  with pytest.raises(UserError, match="sum"):
    MaskingConfig(vocab_size=10, mask_id=5, special_ids=SPECIAL, mask_keep_rand=(0.5, 0.1, 0.1))
