"""MLM and CLM prediction slots: 15%, 80/10/10, padding never predicted, frequency smoothing."""
import numpy as np
import pytest

from xlm_jax.data.masking import MaskingConfig, clm_row, frequency_scores, mask_row, mlm_slots
from xlm_jax.errors import UserError

CFG = MaskingConfig(vocab_size=1000, mask_id=5, n_special=6)


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
  cfg = MaskingConfig(vocab_size=8, mask_id=5, n_special=6, mask_keep_rand=(0.0, 0.0, 1.0))
  tokens = np.full(64, 7, np.int32)
  inputs, index, _, weights = mask_row(rng, tokens, np.ones(64, bool), cfg, mlm_slots(64, 0.15))
  assert set(inputs[index[weights > 0]].tolist()) <= {6, 7}


def test_frequency_smoothing_prefers_rare_tokens():
  counts = np.zeros(10)
  counts[6], counts[7] = 10000, 1
  scores = frequency_scores(counts, 0.5, n_special=6)
  assert scores[:6].sum() == 0
  cfg = MaskingConfig(vocab_size=10, mask_id=5, n_special=6, sample_alpha=0.5)
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
  inputs, index, targets, weights = clm_row(tokens, segments)
  np.testing.assert_array_equal(inputs, tokens)
  np.testing.assert_array_equal(index, np.arange(7))
  np.testing.assert_array_equal(targets, tokens[1:])
  np.testing.assert_array_equal(weights, [1, 1, 1, 0, 1, 1, 0])


def test_bad_masking_settings():
  with pytest.raises(UserError, match="sum"):
    MaskingConfig(vocab_size=10, mask_id=5, n_special=6, mask_keep_rand=(0.5, 0.1, 0.1))
