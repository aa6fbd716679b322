"""Incremental decoding and search (xlm_jax.model decode_step, xlm_jax.decode).

Every expectation is computed with the full-sequence forward of the decoder, never with the cache: the cached
step against full logits, beam search against exhaustive enumeration and against a plain per-sentence Python
beam search written from the reference's algorithm (BeamHypotheses-style lists, one sentence at a time).
Tiny models; the compiled functions are shared across tests (module-scoped fixtures, fixed shapes).
"""
from __future__ import annotations

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xlm_jax import decode as D
from xlm_jax.errors import UserError
from xlm_jax.model import Transformer, TransformerConfig, init_params
from xlm_jax.model.transformer import reorder_cache

EOS, PAD = 1, 2
ENC = TransformerConfig(vocab_size=7, emb_dim=16, n_layers=2, n_heads=2, n_langs=3, max_positions=32)
DEC = ENC.replace(is_decoder=True)
FREE_WORDS = [w for w in range(ENC.vocab_size) if w not in (EOS, PAD)]
S, T = 7, 16           # padded source width; static target cap of the shared compiled functions (a=2, b=2)
SRC = np.array([[1, 3, 4, 5, 6, 0, 1],
                [1, 6, 1, 2, 2, 2, 2],
                [1, 5, 5, 1, 2, 2, 2],
                [1, 4, 3, 6, 1, 2, 2]], np.int32)
SRC_LANGS = np.array([0, 2, 0, 1], np.int32)
TGT_LANGS = np.array([1, 0, 2, 1], np.int32)
SHARED = dict(eos_id=EOS, pad_id=PAD, max_len_a=2.0, max_len_b=2.0)   # limits = 2 * src_len + 2, cap T = 16


def _limit(i):
  return 2 * int((SRC[i] != PAD).sum()) + 2


def _random_params(cfg, seed):
  """Random weights of the model's exact parameter tree (numpy: no compilation). Biases and LayerNorms are
  random too, so that a wrong mask or a dropped term cannot hide behind 0s and 1s."""
  rng = np.random.default_rng(seed)
  shapes = nn.unbox(jax.eval_shape(lambda: init_params(cfg, jax.random.key(0))))

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    if "scale" in name:
      return jnp.asarray(1.0 + 0.3 * noise)
    if "bias" in name:
      return jnp.asarray(0.3 * noise)
    fan_in = np.prod(leaf.shape[:2]) if "out_lin" in name else leaf.shape[0] if "kernel" in name else cfg.emb_dim
    return jnp.asarray(noise / np.sqrt(fan_in))

  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def params():
  return {"encoder": _random_params(ENC, 0), "decoder": _random_params(DEC, 1)}


def _with_eos_bias(params, bias):
  dec = dict(params["decoder"])
  dec["pred_bias"] = dec["pred_bias"].at[EOS].add(bias)
  return {"encoder": params["encoder"], "decoder": dec}


@jax.jit
def _encode(enc_params, src, src_langs):
  segments = (src != PAD).astype(jnp.int32)
  return Transformer(ENC).apply({"params": enc_params}, src, None, src_langs, segments, method="encode"), segments


@jax.jit
def _full_logits(dec_params, hidden, segments, tgt, tgt_langs):
  """The full-sequence (training) forward of the decoder: causal, positions 0.., target language embedding."""
  return Transformer(DEC).apply({"params": dec_params}, tgt, None, tgt_langs, causal=True, src_hidden=hidden,
                                src_segment_ids=segments)


def _sentence_logprobs(params, src_row, src_lang, tgt_lang, seqs, rows=64):
  """log-softmax [M, T, V] of the full forward for target prefixes `seqs` (lists) of one source sentence."""
  hidden, segments = _encode(params["encoder"], src_row[None], jnp.array([src_lang]))
  batch = np.full((rows, T), 3, np.int32)   # filler after the prefix: the causal mask hides it
  for i, seq in enumerate(seqs):
    batch[i, :len(seq)] = seq
  logits = _full_logits(params["decoder"], jnp.repeat(hidden, rows, 0), jnp.repeat(segments, rows, 0),
                        jnp.asarray(batch), jnp.full((rows,), tgt_lang))
  return np.asarray(jax.nn.log_softmax(logits[:len(seqs)], axis=-1), np.float64)


def _sequence_score(logprobs_row, seq, length_penalty):
  total = sum(logprobs_row[j - 1, seq[j]] for j in range(1, len(seq)))
  return total / (len(seq) - 1) ** length_penalty


def _reference_beam(params, src_row, src_lang, tgt_lang, limit, beam, length_penalty, early_stopping,
                    block_eos=False):
  """XLM's generate_beam for one sentence, in plain Python (with our forced final `</s>` and pad never chosen)."""
  live = [([EOS], 0.0)]
  hyps = []                                               # (score, tokens), at most `beam`
  for t in range(limit - 1):
    logp = _sentence_logprobs(params, src_row, src_lang, tgt_lang, [seq for seq, _ in live])[:, t]
    forced = t + 1 == limit - 1
    cands = []
    for i, (seq, total) in enumerate(live):
      for w in range(logp.shape[1]):
        if w == PAD or (forced and w != EOS) or (block_eos and not forced and w == EOS):
          continue
        cands.append((total + logp[i, w], i, w))
    cands = sorted(cands, key=lambda c: -c[0])[:2 * beam]
    best = cands[0][0]
    n_max = (limit - 1) if length_penalty >= 0 else (t + 1)
    if len(hyps) == beam and (early_stopping or min(h[0] for h in hyps) >= best / n_max ** length_penalty):
      break
    nxt = []
    for total, i, w in cands:
      if w == EOS:
        hyps = sorted(hyps + [(total / (t + 1) ** length_penalty, live[i][0] + [EOS])], key=lambda h: -h[0])[:beam]
      else:
        nxt.append((live[i][0] + [w], total))
      if len(nxt) == beam:
        break
    if not nxt:
      break
    live = nxt
  return max(hyps, key=lambda h: h[0])


def _row(decoded, i):
  n = int(decoded.lengths[i])
  return np.asarray(decoded.tokens[i, :n]).tolist()


# ---------------------------------------------------------------------------------------------------------------
# (a) the cached step equals the full-sequence forward


def test_cached_step_equals_full_forward(params):
  dec = Transformer(DEC)
  hidden, segments = _encode(params["encoder"], jnp.asarray(SRC), jnp.asarray(SRC_LANGS))
  rng = np.random.default_rng(0)
  tgt = np.concatenate([np.full((4, 1), EOS), rng.integers(3, 7, (4, T - 1))], 1).astype(np.int32)
  full = _full_logits(params["decoder"], hidden, segments, jnp.asarray(tgt), jnp.asarray(TGT_LANGS))
  cache = dec.apply({"params": params["decoder"]}, T, src_hidden=hidden, src_segment_ids=segments,
                    method="init_cache")
  step = jax.jit(lambda tok, t, c: dec.apply({"params": params["decoder"]}, tok, t, jnp.asarray(TGT_LANGS), c,
                                             method="decode_step"))
  for t in range(T):
    logits, cache = step(jnp.asarray(tgt[:, t]), t, cache)
    np.testing.assert_allclose(logits, full[:, t], atol=1e-5, rtol=0)


def test_cached_step_follows_reordered_beams(params):
  """With 3 beams per sentence, random parents every step: each row's logits are those of its own history."""
  dec, beams = Transformer(DEC), 3
  src = jnp.asarray(SRC[:2])
  hidden, segments = _encode(params["encoder"], src, jnp.asarray(SRC_LANGS[:2]))
  langs = jnp.repeat(jnp.asarray(TGT_LANGS[:2]), beams)
  cache = dec.apply({"params": params["decoder"]}, T, beams=beams, src_hidden=hidden, src_segment_ids=segments,
                    method="init_cache")
  step = jax.jit(lambda tok, t, c: dec.apply({"params": params["decoder"]}, tok, t, langs, c, method="decode_step"))
  rng = np.random.default_rng(1)
  seqs = [[EOS] for _ in range(2 * beams)]
  for t in range(T - 1):
    logits, cache = step(jnp.asarray([s[t] for s in seqs]), t, cache)
    batch = np.full((2 * beams, T), 3, np.int32)
    for i, s in enumerate(seqs):
      batch[i, :len(s)] = s
    full = _full_logits(params["decoder"], jnp.repeat(hidden, beams, 0), jnp.repeat(segments, beams, 0),
                        jnp.asarray(batch), langs)
    np.testing.assert_allclose(logits, full[:, t], atol=1e-5, rtol=0)
    parents = rng.integers(0, beams, (2, beams))
    seqs = [seqs[b * beams + p] + [int(rng.integers(3, 7))] for b in range(2) for p in parents[b]]
    cache = reorder_cache(cache, jnp.asarray(parents))


# ---------------------------------------------------------------------------------------------------------------
# (b) a large enough beam finds the best sequence of all


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.5, -0.5])
def test_large_beam_finds_the_exhaustive_optimum(params, length_penalty):
  limit, beam = 4, 32     # all 1 + 5 + 25 framed targets of <= 2 free words fit in the beam, none is cut
  out = D.generate(params, ENC, DEC, SRC[:3], SRC_LANGS[:3], TGT_LANGS[:3], beam_size=beam,
                   length_penalty=length_penalty, eos_id=EOS, pad_id=PAD, max_len_a=0.0, max_len_b=limit)
  for i in range(3):
    seqs = [[EOS, *words, EOS] for n in range(limit - 1) for words in itertools.product(FREE_WORDS, repeat=n)]
    logp = _sentence_logprobs(params, jnp.asarray(SRC[i]), SRC_LANGS[i], TGT_LANGS[i], seqs)
    scores = [_sequence_score(logp[j], s, length_penalty) for j, s in enumerate(seqs)]
    best = int(np.argmax(scores))
    assert _row(out, i) == seqs[best], (i, length_penalty)
    assert float(out.scores[i]) == pytest.approx(scores[best], abs=1e-5)
    ranked = sorted(scores, reverse=True)
    np.testing.assert_allclose(np.asarray(out.nbest_scores[i, :len(seqs)]), ranked, atol=1e-5)
    assert np.all(np.asarray(out.nbest_scores[i, len(seqs):]) == -np.inf)


# ---------------------------------------------------------------------------------------------------------------
# (c) greedy: beam_size=1, argmax of the full model, and one-beam search with early stopping


def test_greedy_is_argmax_and_equals_one_beam_search(params):
  eos_params = _with_eos_bias(params, 0.3)      # rows stop earlier
  for p in (params, eos_params):
    greedy = D.generate(p, ENC, DEC, SRC, SRC_LANGS, TGT_LANGS, beam_size=1, length_penalty=0.7, **SHARED)
    for i in range(len(SRC)):
      row, limit = _row(greedy, i), _limit(i)
      score, one_beam = _reference_beam(p, jnp.asarray(SRC[i]), SRC_LANGS[i], TGT_LANGS[i], limit, 1, 0.7, True)
      assert row == one_beam and float(greedy.scores[i]) == pytest.approx(score, abs=1e-5)
      logp = _sentence_logprobs(p, jnp.asarray(SRC[i]), SRC_LANGS[i], TGT_LANGS[i], [row])[0]
      for j in range(1, len(row)):
        allowed = [w for w in range(ENC.vocab_size) if w != PAD] if j < limit - 1 else [EOS]
        assert row[j] == max(allowed, key=lambda w: logp[j - 1, w])
      assert float(greedy.scores[i]) == pytest.approx(_sequence_score(logp, row, 0.7), abs=1e-5)
  lengths = np.asarray(D.generate(params, ENC, DEC, SRC, SRC_LANGS, TGT_LANGS, **SHARED).lengths)
  assert 2 < len(set(lengths.tolist())) and np.any(lengths == 2 * (SRC != PAD).sum(1) + 2)   # early ends and limits


# ---------------------------------------------------------------------------------------------------------------
# (d) a sentence decodes the same alone and in a batch


@pytest.mark.parametrize("beam_size", [1, 4])
def test_batch_independence(params, beam_size):
  p = params
  batch = D.generate(p, ENC, DEC, SRC, SRC_LANGS, TGT_LANGS, beam_size=beam_size, **SHARED)
  for i in range(len(SRC)):
    alone = D.generate(p, ENC, DEC, SRC[i:i + 1], SRC_LANGS[i:i + 1], TGT_LANGS[i:i + 1], beam_size=beam_size,
                       **SHARED)
    assert _row(batch, i) == _row(alone, 0)
    np.testing.assert_allclose(batch.nbest_scores[i], alone.nbest_scores[0], atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# (e) per-row maximum length and padding


@pytest.mark.parametrize("beam_size", [1, 4])
def test_rows_respect_their_own_limit_and_are_padded(params, beam_size):
  out = D.generate(params, ENC, DEC, SRC, SRC_LANGS, TGT_LANGS, beam_size=beam_size, block_eos=True, **SHARED)
  tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  assert tokens.shape == (len(SRC), T)
  np.testing.assert_array_equal(lengths, 2 * (SRC != PAD).sum(1) + 2)      # </s> blocked: every row hits its limit
  for row, n in zip(tokens, lengths):
    assert row[0] == EOS and row[n - 1] == EOS
    assert np.all(row[n:] == PAD) and not np.any(row[1:n - 1] == EOS) and not np.any(row[:n] == PAD)
  assert D.to_lists(out, EOS) == [row[1:n - 1].tolist() for row, n in zip(tokens, lengths)]
  free = D.generate(params, ENC, DEC, SRC, SRC_LANGS, TGT_LANGS, beam_size=beam_size, **SHARED)
  assert np.all(np.asarray(free.lengths) <= lengths)
  for row, n in zip(np.asarray(free.tokens), np.asarray(free.lengths)):
    assert np.all(row[n:] == PAD) and np.sum(row == EOS) == 2


def test_static_cap_and_reference_limits():
  options = D.DecodeOptions(eos_id=EOS, pad_id=PAD, max_len_a=1.3, max_len_b=5)
  assert D.target_length_cap(10, options, 512) == 18          # int(1.3 * 10 + 5), not 17 from float rounding
  np.testing.assert_array_equal(D.row_limits(jnp.array([10, 3, 100]), options, 18), [18, 8, 18])
  assert D.target_length_cap(400, D.DecodeOptions(eos_id=EOS, pad_id=PAD), 512) == 512


# ---------------------------------------------------------------------------------------------------------------
# (f) beam search as the reference algorithm, with and without early stopping


def test_beam_search_matches_reference_algorithm_and_early_stopping(params):
  beam, differs = 4, 0
  for bias in (0.0, 1.5):     # with `</s>` made likelier, early stopping cuts searches short
    p = _with_eos_bias(params, bias)
    results = {}
    for early in (False, True):
      out = D.generate(p, ENC, DEC, SRC, SRC_LANGS, TGT_LANGS, beam_size=beam, early_stopping=early,
                       length_penalty=1.0, **SHARED)
      for i in range(len(SRC)):
        limit = _limit(i)
        score, seq = _reference_beam(p, jnp.asarray(SRC[i]), SRC_LANGS[i], TGT_LANGS[i], limit, beam, 1.0, early)
        assert _row(out, i) == seq, (bias, early, i)
        assert float(out.scores[i]) == pytest.approx(score, abs=1e-5)
      results[early] = np.asarray(out.nbest_scores)
    differs += int(np.any(np.abs(results[True] - results[False]) > 1e-6))
  assert differs, "early stopping never changed the n-best lists: the test model is too easy"


def test_bad_options_are_user_errors(params):
  with pytest.raises(UserError, match="beam_size"):
    D.generate(params, ENC, DEC, SRC, SRC_LANGS, TGT_LANGS, beam_size=0, eos_id=EOS, pad_id=PAD)
  with pytest.raises(UserError, match="tgt_lang_ids"):
    D.generate(params, ENC, DEC, SRC, SRC_LANGS, None, eos_id=EOS, pad_id=PAD)
  with pytest.raises(UserError, match="max_positions"):
    D.generate(params, ENC, DEC, SRC, SRC_LANGS, TGT_LANGS, eos_id=EOS, pad_id=PAD, max_len=64)
  with pytest.raises(UserError, match="decoder"):
    D.generate(params, ENC, ENC, SRC, SRC_LANGS, TGT_LANGS, eos_id=EOS, pad_id=PAD)


# ---------------------------------------------------------------------------------------------------------------
# (g) an output vocabulary per target language


@pytest.mark.parametrize("beam_size", [1, 4])
def test_vocab_mask_equals_a_model_without_the_forbidden_words(params, beam_size):
  """Rows for language l decode as if the output layer had only language l's words: the same rows and scores as
  the unmasked search on a model whose output bias pushes the forbidden words to -1e9 (renormalised softmax)."""
  mask = D.output_vocab_mask({0: np.array([1, 1, 0, 1, 1, 0, 1]), 1: np.array([5, 0, 5, 0, 5, 0, 5])},
                             n_langs=3, vocab_size=ENC.vocab_size, min_count=1, eos_id=EOS)
  assert mask[1, EOS] and not mask[1, 3] and mask[2].all()      # </s> always; a language without counts: all words
  masked = D.generate(params, ENC, DEC, SRC, SRC_LANGS, TGT_LANGS, beam_size=beam_size, vocab_mask=mask, **SHARED)
  plain = D.generate(params, ENC, DEC, SRC, SRC_LANGS, TGT_LANGS, beam_size=beam_size, **SHARED)
  changed = 0
  for lang in np.unique(TGT_LANGS):
    dec = dict(params["decoder"])
    dec["pred_bias"] = dec["pred_bias"] + jnp.where(jnp.asarray(mask[lang]), 0.0, -1e9)
    biased = D.generate({"encoder": params["encoder"], "decoder": dec}, ENC, DEC, SRC, SRC_LANGS, TGT_LANGS,
                        beam_size=beam_size, **SHARED)
    for i in np.flatnonzero(TGT_LANGS == lang):
      row = _row(masked, i)
      assert row == _row(biased, i) and all(mask[lang][w] for w in row)
      assert float(masked.scores[i]) == pytest.approx(float(biased.scores[i]), abs=1e-5)
      changed += row != _row(plain, i)
  assert changed, "the mask changed no row: the test model never produced a forbidden word"


def test_vocab_mask_shape_and_eos_are_checked(params):
  with pytest.raises(UserError, match="vocab_mask must have shape"):
    D.generate(params, ENC, DEC, SRC, SRC_LANGS, TGT_LANGS, vocab_mask=np.ones((2, ENC.vocab_size), bool), **SHARED)
  with pytest.raises(UserError, match="forbids </s>"):
    D.generate(params, ENC, DEC, SRC, SRC_LANGS, TGT_LANGS, vocab_mask=np.zeros((3, ENC.vocab_size), bool),
               **SHARED)
