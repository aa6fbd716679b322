"""NMT row builders over token stores: MT pairs packed on both sides, denoising noise, back-translation sources."""
import numpy as np

from xlm_jax.data.noise import NoiseConfig, add_noise
from xlm_jax.data.rows import SRC, TGT, BtRows, PairIndex, TranslationRows
from xlm_jax.data.stores import TokenStore

EOS, PAD, MASK = 1, 2, 5


def test_noise_keeps_words_near_their_place_and_never_empties_a_sentence():
  rng = np.random.default_rng(0)
  lengths = np.array([1, 5, 12, 30])
  words = np.zeros((4, 30), np.int32)
  for i, n in enumerate(lengths):
    words[i, :n] = 100 + np.arange(n)
  shuffled, n_shuffled = add_noise(rng, words, lengths, NoiseConfig(word_shuffle=3))
  np.testing.assert_array_equal(n_shuffled, lengths)
  for i, n in enumerate(lengths):
    moved = np.abs(shuffled[i, :n] - 100 - np.arange(n))
    assert moved.max() <= 2 and sorted(shuffled[i, :n]) == list(100 + np.arange(n))
  dropped, n_dropped = add_noise(rng, np.repeat(words, 50, 0), np.repeat(lengths, 50), NoiseConfig(word_dropout=0.9))
  assert n_dropped.min() >= 1 and np.all(n_dropped <= np.repeat(lengths, 50))
  for row, n in zip(dropped, n_dropped):
    assert np.all(np.diff(row[:n]) > 0)  # kept words keep their order
  long = np.repeat(words[3:], 200, 0)  # 200 sentences of 30 words: the configured drop rate is what is dropped
  _, n_kept = add_noise(rng, long, np.full(200, 30), NoiseConfig(word_dropout=0.1))
  assert abs(1 - n_kept.sum() / (200 * 30) - 0.1) < 0.02
  blank, _ = add_noise(rng, np.repeat(words, 50, 0), np.repeat(lengths, 50), NoiseConfig(word_blank=0.3))
  real = np.arange(30) < np.repeat(lengths, 50)[:, None]
  assert abs((blank[real] == MASK).mean() - 0.3) < 0.03 and not np.any(blank[~real] == MASK)


def stores(n=40, seed=0):
  rng = np.random.default_rng(seed)
  a = [rng.integers(10, 50, size=rng.integers(1, 8)) for _ in range(n)]
  b = [rng.integers(60, 99, size=rng.integers(1, 8)) for _ in range(n)]
  return TokenStore.from_sentences(a, EOS), TokenStore.from_sentences(b, EOS), a, b


def test_mt_rows_pair_each_source_with_its_own_target():
  first, second, a, b = stores()
  rows = TranslationRows(src_len=24, tgt_len=24, pad_id=PAD, src_lang=1, tgt_lang=0,
                         pairs=PairIndex(first, second, 48, max_side=24), swap=True)  # second language -> first
  out = rows.rows(np.random.default_rng(3), 4)
  by_src = {tuple(s): t for s, t in zip(b, a)}
  found = 0
  for r in range(4):
    seg_s, seg_t = out["src_segments"][r], out["tgt_segments"][r]
    assert set(np.unique(seg_s[seg_s > 0])) == set(np.unique(seg_t[seg_t > 0]))
    for k in np.unique(seg_s[seg_s > 0]):
      src, tgt = out["src_tokens"][r][seg_s == k], out["tgt_tokens"][r][seg_t == k]
      assert src[0] == src[-1] == tgt[0] == tgt[-1] == EOS
      np.testing.assert_array_equal(by_src[tuple(src[1:-1])], tgt[1:-1])
      np.testing.assert_array_equal(out["src_positions"][r][seg_s == k], np.arange(len(src)))
      found += 1
    assert np.all(out["src_langs"][r][seg_s > 0] == 1) and np.all(out["tgt_langs"][r][seg_t > 0] == 0)
    # next-token targets stay inside a target sentence
    w = out["pred_weights"][r] > 0
    np.testing.assert_array_equal(out["pred_targets"][r][w], out["tgt_tokens"][r][1:][w])
    assert np.all(seg_t[1:][w] == seg_t[:-1][w])
  assert found >= 8  # packed: several pairs per row
  assert set(out) == {*SRC, *TGT, "pred_index", "pred_targets", "pred_weights"}


def test_denoising_rows_reconstruct_the_clean_sentence_from_its_noisy_copy():
  first, _, a, _ = stores()
  rows = TranslationRows(src_len=24, tgt_len=24, pad_id=PAD, src_lang=2, tgt_lang=2, sentences=first,
                         noise=NoiseConfig(word_shuffle=3, word_dropout=0.1, word_blank=0.1, mask_id=MASK))
  out = rows.rows(np.random.default_rng(1), 4)
  clean = {tuple(x) for x in a}
  for r in range(4):
    seg_s, seg_t = out["src_segments"][r], out["tgt_segments"][r]
    for k in np.unique(seg_t[seg_t > 0]):
      tgt, src = out["tgt_tokens"][r][seg_t == k][1:-1], out["src_tokens"][r][seg_s == k][1:-1]
      assert tuple(tgt) in clean
      assert 1 <= len(src) <= len(tgt) and set(src.tolist()) <= set(tgt.tolist()) | {MASK}


def test_back_translation_rows_are_framed_sentences():
  first, _, a, _ = stores()
  out = BtRows(first, 10, PAD, lang1=0, lang2=1).rows(np.random.default_rng(2), 6)
  for row in out["tokens"]:
    n = int((row != PAD).sum())
    assert row[0] == row[n - 1] == EOS and tuple(row[1:n - 1]) in {tuple(x) for x in a}
  assert np.all(out["langs1"] == 0) and np.all(out["langs2"] == 1)
