"""The one decode path of xlm_jax: greedy and beam search for the NMT encoder-decoder, jitted and batched.

Validation BLEU, on-the-fly back-translation, `python -m xlm_jax.translate` and `Bundle.translate` all call this
module. Two entry points:

    out = generate(params, enc_cfg, dec_cfg, src_tokens, src_langs, tgt_lang_ids, beam_size=4,
                   eos_id=tok.eos_id, pad_id=tok.pad_id)          # host call: validates, jits once per shape
    decode = make_decoder(enc_cfg, dec_cfg, DecodeOptions(...))   # pure function, for use inside your own jit
    out = decode(params, src_tokens, src_langs, tgt_lang_ids)

`params` is `{"encoder": ..., "decoder": ...}`. The result (`Decoded`) holds target rows framed `</s> w... </s>`
and right-padded with the pad id, their framed lengths, and scores; `to_lists` strips the framing.

Semantics (facebookresearch/XLM `generate` / `generate_beam`, see shared/reference/xlm-reference.md section 3):
- The decoder reads `</s> t1 ... tm </s>`: decoding starts from `</s>` (the only BOS) and a hypothesis ends at the
  next `</s>`. Target positions restart at 0; the target language reaches the decoder only through its language
  embedding (`tgt_lang_ids`), so a model without language embeddings cannot be told which language to produce.
- Length limit per row: a framed target is at most `max(2, floor(max_len_a * src_len + max_len_b))` tokens, where
  src_len counts the framed source's non-pad tokens, capped by a static `T` (`max_len`, default
  `floor(max_len_a * S + max_len_b)` for padded source width S, and never more than the decoder's positions).
  The reference uses one limit for the whole batch (`int(1.5 * len.max() + 10)` for evaluation, `int(1.3 * ... + 5)`
  for back-translation, see EVAL_MAX_LEN / BACKTRANSLATION_MAX_LEN); a per-row limit makes the result of a
  sentence independent of the batch it is decoded in.
- Scores: a hypothesis of framed length n is scored sum(log p of its n - 1 generated tokens, final `</s>`
  included) / (n - 1) ** length_penalty. The reference's length is the same n - 1.
- Beam search (beam_size > 1): per step, log-softmax plus the beam's score, the top 2 * beam_size candidates over
  beam x vocabulary; going down that list, a candidate ending in `</s>` becomes a finished hypothesis (only
  while fewer than beam_size live candidates were taken) and the others fill the next beams. The best beam_size
  finished hypotheses of a sentence are kept. With `early_stopping` a sentence stops once it has beam_size of
  them; otherwise it stops when no live beam can beat the worst kept one (the reference's test
  worst >= best_sum_logprob / (limit - 1) ** length_penalty). At step 0 only beam 0 is live.
- Greedy (beam_size = 1) takes the argmax; it equals beam search with one beam and early stopping.

Deliberate differences from the reference:
- At its last allowed position a row is forced to `</s>`, scored with the model's log-probability of `</s>` there.
  The reference instead scores the last (arbitrary) word and then overwrites it with `</s>`.
- The pad id is never generated (XLM never trains on it as a target; a pad inside a row would corrupt lengths).
- With length_penalty < 0 the stopping test uses the shortest possible length, so it stays a true bound (the
  reference's formula is only a bound for length_penalty >= 0).
- `block_eos` forbids `</s>` before the last allowed position (benchmarks use it so every sentence runs to the
  limit). Blocked words are removed after the log-softmax, so the remaining words keep their log-probabilities.
- `vocab_mask` (optional, bool [n_langs, V]) restricts each target language to its own words: the reference has no
  such option. Unlike `block_eos`, masked words are removed BEFORE the log-softmax (the distribution is
  renormalised over the allowed words), as if the model's output layer had only them.

Implementation: one `lax.while_loop` over time, vectorised over sentences x beams, no host synchronisation per
step; it stops early once every sentence is finished. The model keeps an explicit `DecodeCache`; reordering beams
rewrites a small slot table instead of gathering every layer's keys and values (see `xlm_jax.model.transformer`).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from xlm_jax.errors import UserError
from xlm_jax.model import EncoderDecoder, TransformerConfig
from xlm_jax.model.transformer import DecodeCache, reorder_cache

EVAL_MAX_LEN = (1.5, 10)              # reference: validation/test BLEU, max_len = int(1.5 * len + 10)
BACKTRANSLATION_MAX_LEN = (1.3, 5)    # reference: on-the-fly back-translation, max_len = int(1.3 * len + 5)
_LENGTH_TOLERANCE = 1e-4              # so that 1.3 * 10 + 5 counts as 18 in float32 as in exact arithmetic

StepFn = Callable[[jax.Array, jax.Array, DecodeCache], tuple[jax.Array, DecodeCache]]


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
  """Decoding options. `generate` compiles once per input shape and distinct (beam_size, eos_id, pad_id,
  max_len_a, max_len_b, max_len); length_penalty, early_stopping and block_eos are passed as traced values."""

  eos_id: int
  pad_id: int
  beam_size: int = 1
  length_penalty: float = 1.0
  early_stopping: bool = False
  max_len_a: float = EVAL_MAX_LEN[0]
  max_len_b: float = EVAL_MAX_LEN[1]
  max_len: int | None = None
  block_eos: bool = False

  def validate(self, vocab_size: int | None = None, max_positions: int | None = None) -> None:
    """Raise `UserError` naming the bad option."""
    problems = []
    if not isinstance(self.beam_size, (int, np.integer)) or self.beam_size < 1:
      problems.append(f"beam_size={self.beam_size!r} must be an integer >= 1")
    if not math.isfinite(self.length_penalty):
      problems.append(f"length_penalty={self.length_penalty!r} must be finite")
    if not (math.isfinite(self.max_len_a) and math.isfinite(self.max_len_b)) or self.max_len_a < 0:
      problems.append(f"max_len_a={self.max_len_a!r}, max_len_b={self.max_len_b!r} must be finite, a >= 0")
    if self.max_len is not None and self.max_len < 2:
      problems.append(f"max_len={self.max_len!r} must be at least 2 (room for `</s> </s>`)")
    if max_positions is not None and self.max_len is not None and self.max_len > max_positions:
      problems.append(f"max_len={self.max_len} exceeds the decoder's max_positions={max_positions}")
    if self.eos_id == self.pad_id:
      problems.append(f"eos_id and pad_id are both {self.eos_id}")
    for name in ("eos_id", "pad_id"):
      value = getattr(self, name)
      if value < 0 or (vocab_size is not None and value >= vocab_size):
        problems.append(f"{name}={value} is not a token id of a {vocab_size}-word vocabulary")
    if problems:
      raise UserError("invalid decoding options: " + "; ".join(problems) + ".")


class Decoded(NamedTuple):
  """What decoding returns (jax arrays; `np.asarray` them on the host).

  tokens [B, T] int32: the best hypothesis per sentence, framed `</s> w... </s>`, right-padded with the pad id.
  lengths [B] int32: framed lengths (both `</s>` included); a row's T - lengths trailing entries are padding.
  scores [B] float32: sum of log-probabilities / (lengths - 1) ** length_penalty.
  nbest_tokens [B, K, T], nbest_lengths [B, K], nbest_scores [B, K]: the K = beam_size finished hypotheses kept
  per sentence, best first (score -inf and `</s> </s>` where fewer than K were found). For greedy, K = 1.
  """

  tokens: jax.Array
  lengths: jax.Array
  scores: jax.Array
  nbest_tokens: jax.Array
  nbest_lengths: jax.Array
  nbest_scores: jax.Array


def target_length_cap(src_width: int, options: DecodeOptions, max_positions: int) -> int:
  """The static T: `options.max_len`, or floor(a * S + b) for a padded source width S, within [2, max_positions]."""
  if options.max_len is not None:
    cap = options.max_len
  else:
    cap = math.floor(options.max_len_a * src_width + options.max_len_b + _LENGTH_TOLERANCE)
  return int(min(max(cap, 2), max_positions))


def row_limits(src_lengths: jax.Array, options: DecodeOptions, cap: int) -> jax.Array:
  """Per-row framed target limit: clip(floor(a * src_len + b), 2, cap), int32 [B]."""
  raw = jnp.floor(options.max_len_a * src_lengths.astype(jnp.float32) + options.max_len_b + _LENGTH_TOLERANCE)
  return jnp.clip(raw, 2, cap).astype(jnp.int32)


def _blocked_words(words: jax.Array, pad_id: int, eos_id: int, block_eos) -> jax.Array:
  return (words == pad_id) | (jnp.asarray(block_eos) & (words == eos_id))


def _normalise(sum_logprob: jax.Array, n_generated: jax.Array, length_penalty) -> jax.Array:
  return sum_logprob / jnp.power(n_generated.astype(jnp.float32), length_penalty)


def greedy_search(step: StepFn, cache: DecodeCache, limits: jax.Array, max_len: int, *, eos_id: int, pad_id: int,
                  length_penalty=1.0, block_eos=False) -> Decoded:
  """Argmax decoding of B rows (cache built with one beam) up to framed length `limits` [B] <= `max_len`.

  `step(tokens [B], t, cache) -> (logits [B, V], cache)` runs the model on the tokens at time t. Rows stop at
  their first `</s>`; the loop stops when every row has. Traceable (call it inside jit); `length_penalty` and
  `block_eos` may be traced scalars, `max_len`, `eos_id` and `pad_id` are static.
  """
  batch = limits.shape[0]
  tokens = jnp.full((batch, max_len), pad_id, jnp.int32).at[:, 0].set(eos_id)

  def cond(state):
    t, _, _, finished, _, _ = state
    return (t < max_len - 1) & ~jnp.all(finished)

  def body(state):
    t, tokens, cache, finished, sum_logprob, lengths = state
    logits, cache = step(lax.dynamic_index_in_dim(tokens, t, axis=1, keepdims=False), t, cache)
    vocab = jnp.arange(logits.shape[-1])
    best = jnp.argmax(jnp.where(_blocked_words(vocab, pad_id, eos_id, block_eos), -jnp.inf, logits), axis=-1)
    forced = t + 1 >= limits - 1                      # this step writes the row's last allowed position
    word = jnp.where(forced, eos_id, best).astype(jnp.int32)
    logprob = jnp.take_along_axis(logits, word[:, None], axis=1)[:, 0] - jax.nn.logsumexp(logits, axis=-1)
    sum_logprob = sum_logprob + jnp.where(finished, 0.0, logprob)
    word = jnp.where(finished, pad_id, word)
    tokens = lax.dynamic_update_slice(tokens, word[:, None], (0, t + 1))
    ended = ~finished & (word == eos_id)
    lengths = jnp.where(ended, t + 2, lengths)
    return t + 1, tokens, cache, finished | ended, sum_logprob, lengths

  init = (jnp.int32(0), tokens, cache, jnp.zeros((batch,), bool), jnp.zeros((batch,), jnp.float32),
          jnp.full((batch,), 2, jnp.int32))
  _, tokens, _, _, sum_logprob, lengths = lax.while_loop(cond, body, init)
  scores = _normalise(sum_logprob, lengths - 1, length_penalty)
  return Decoded(tokens, lengths, scores, tokens[:, None], lengths[:, None], scores[:, None])


class _BeamState(NamedTuple):
  t: jax.Array                 # int32 scalar: the time whose tokens are fed next
  tokens: jax.Array            # [B, K, T] live beams, framed so far, pad beyond t
  beam_scores: jax.Array       # [B, K] sum of log-probabilities; -inf for a dead beam
  cache: DecodeCache
  fin_tokens: jax.Array        # [B, K, T] kept finished hypotheses, best first
  fin_scores: jax.Array        # [B, K] their normalised scores (-inf: empty)
  fin_lengths: jax.Array       # [B, K] their framed lengths
  done: jax.Array              # [B] bool


def beam_search(step: StepFn, cache: DecodeCache, limits: jax.Array, max_len: int, *, beam_size: int, eos_id: int,
                pad_id: int, length_penalty=1.0, early_stopping=False, block_eos=False) -> Decoded:
  """Beam search of B sentences x K = beam_size rows (cache built with `beams=K`), as in the module docstring.

  `step(tokens [B*K], t, cache) -> (logits [B*K, V], cache)`, rows sentence-major. Traceable (call inside jit);
  `length_penalty`, `early_stopping` and `block_eos` may be traced scalars, the rest is static.
  """
  n_sent, k = limits.shape[0], beam_size
  live_tokens = jnp.full((n_sent, k, max_len), pad_id, jnp.int32).at[:, :, 0].set(eos_id)
  empty_hyps = live_tokens.at[:, :, 1].set(eos_id)
  early_stopping = jnp.asarray(early_stopping)

  def cond(s: _BeamState):
    return (s.t < max_len - 1) & ~jnp.all(s.done)

  def body(s: _BeamState) -> _BeamState:
    t = s.t
    logits, cache = step(lax.dynamic_index_in_dim(s.tokens, t, axis=2, keepdims=False).reshape(-1), t, s.cache)
    vocab_size = logits.shape[-1]
    lse = jax.nn.logsumexp(logits, axis=-1)
    # Candidates per row from the raw logits (the log-softmax shift is monotone within a row); a few extra so
    # that blocked words can be dropped and 2K allowed candidates remain.
    width = min(2 * k + 2, vocab_size)
    values, words = lax.top_k(logits, width)
    values = jnp.where(_blocked_words(words, pad_id, eos_id, block_eos), -jnp.inf, values)
    forced = jnp.repeat(t + 1 >= limits - 1, k)[:, None]      # last allowed position: only `</s>`
    first = jnp.arange(width)[None, :] == 0
    values = jnp.where(forced, jnp.where(first, logits[:, eos_id][:, None], -jnp.inf), values)
    words = jnp.where(forced, eos_id, words)
    cand = values - lse[:, None] + s.beam_scores.reshape(-1)[:, None]
    scores, pick = lax.top_k(cand.reshape(n_sent, k * width), 2 * k)           # [B, 2K], best first
    cand_words = jnp.take_along_axis(words.reshape(n_sent, k * width), pick, axis=1)
    cand_beams = pick // width
    valid = scores > -jnp.inf
    is_eos = cand_words == eos_id

    # The reference's stopping test, made with this step's best candidate before anything is added.
    n_kept = jnp.sum(s.fin_scores > -jnp.inf, axis=1)
    longest = _normalise(scores[:, 0], limits - 1, length_penalty)
    shortest = _normalise(scores[:, 0], jnp.broadcast_to(t + 1, limits.shape), length_penalty)
    bound = jnp.where(length_penalty >= 0, longest, shortest)
    worst = jnp.min(s.fin_scores, axis=1)
    done = s.done | ((n_kept >= k) & (early_stopping | (worst >= bound)))

    live = valid & ~is_eos
    live_before = jnp.cumsum(live, axis=1) - live      # live candidates ranked above this one
    open_ = (live_before < k) & ~done[:, None]         # the candidate is looked at (beam not yet full)
    ended = valid & is_eos & open_
    taken = live & open_

    # Candidate rows: the parent beam's tokens with the new word at t + 1.
    cand_tokens = jnp.take_along_axis(s.tokens, cand_beams[:, :, None], axis=1)
    cand_tokens = lax.dynamic_update_slice(cand_tokens, cand_words[:, :, None], (0, 0, t + 1))

    # Finished hypotheses: merge the kept ones with this step's, keep the best K.
    new_scores = jnp.where(ended, _normalise(scores, jnp.broadcast_to(t + 1, scores.shape), length_penalty),
                           -jnp.inf)
    all_scores = jnp.concatenate([s.fin_scores, new_scores], axis=1)
    fin_scores, keep = lax.top_k(all_scores, k)
    fin_tokens = jnp.take_along_axis(jnp.concatenate([s.fin_tokens, cand_tokens], axis=1), keep[:, :, None], axis=1)
    all_lengths = jnp.concatenate([s.fin_lengths, jnp.full(scores.shape, t + 2, jnp.int32)], axis=1)
    fin_lengths = jnp.take_along_axis(all_lengths, keep, axis=1)

    # Next beams: slot j takes the j-th live candidate taken.
    slot_of = taken[:, :, None] & (live_before[:, :, None] == jnp.arange(k)[None, None, :])   # [B, 2K, K]
    source = jnp.argmax(slot_of, axis=1)                                                       # [B, K]
    filled = jnp.any(slot_of, axis=1)
    beam_scores = jnp.where(filled, jnp.take_along_axis(scores, source, axis=1), -jnp.inf)
    parents = jnp.where(filled, jnp.take_along_axis(cand_beams, source, axis=1), jnp.arange(k)[None, :])
    tokens = jnp.take_along_axis(cand_tokens, source[:, :, None], axis=1)
    done = done | ~jnp.any(filled, axis=1)
    done = done | (early_stopping & (jnp.sum(fin_scores > -jnp.inf, axis=1) >= k))
    return _BeamState(t + 1, tokens, beam_scores, reorder_cache(cache, parents), fin_tokens, fin_scores,
                      fin_lengths, done)

  beam_scores = jnp.full((n_sent, k), -jnp.inf, jnp.float32).at[:, 0].set(0.0)
  init = _BeamState(jnp.int32(0), live_tokens, beam_scores, cache, empty_hyps,
                    jnp.full((n_sent, k), -jnp.inf, jnp.float32), jnp.full((n_sent, k), 2, jnp.int32),
                    jnp.zeros((n_sent,), bool))
  final = lax.while_loop(cond, body, init)
  return Decoded(final.fin_tokens[:, 0], final.fin_lengths[:, 0], final.fin_scores[:, 0], final.fin_tokens,
                 final.fin_lengths, final.fin_scores)


def make_decoder(enc_cfg: TransformerConfig, dec_cfg: TransformerConfig,
                 options: DecodeOptions) -> Callable[..., Decoded]:
  """A pure, traceable `decode(params, src_tokens, src_langs, tgt_lang_ids, length_penalty=None,
  early_stopping=None, block_eos=None) -> Decoded` (jit it, or call it inside a jitted step, e.g. for
  back-translation). The three optional arguments override `options` and may be traced scalars.

  src_tokens int [B, S]: framed sources `</s> w... </s>`, right-padded with `options.pad_id`.
  src_langs: source language ids, [B] or [B, S] (None for models without language embeddings).
  tgt_lang_ids: int [B], the language to produce (None only for decoders without language embeddings).
  vocab_mask: None, or bool [n_langs, V]: the words language l may produce are those where vocab_mask[l] is
  True (keep `</s>` allowed); needs tgt_lang_ids. See `output_vocab_mask`.
  Dropout is off. The encoder runs once; every beam of a sentence shares its cross-attention keys/values.
  """
  model = EncoderDecoder(enc_cfg, dec_cfg)
  k = options.beam_size

  def decode(params, src_tokens, src_langs, tgt_lang_ids, length_penalty=None, early_stopping=None,
             block_eos=None, vocab_mask=None) -> Decoded:
    length_penalty = options.length_penalty if length_penalty is None else length_penalty
    early_stopping = options.early_stopping if early_stopping is None else early_stopping
    block_eos = options.block_eos if block_eos is None else block_eos
    params = nn.unbox(params)
    src_tokens = jnp.asarray(src_tokens, jnp.int32)
    cap = target_length_cap(src_tokens.shape[1], options, dec_cfg.max_positions)
    segments = (src_tokens != options.pad_id).astype(jnp.int32)
    variables = {"params": params}
    hidden = model.apply(variables, src_tokens, None, src_langs, segments, method="encode")
    limits = row_limits(jnp.sum(segments, axis=1), options, cap)
    cache = model.apply(variables, cap, beams=k, src_hidden=hidden, src_segment_ids=segments, method="init_cache")
    langs = None if tgt_lang_ids is None else jnp.repeat(jnp.asarray(tgt_lang_ids, jnp.int32), k)

    allowed = None if vocab_mask is None else jnp.asarray(vocab_mask, bool)[langs]   # [B*K, V]

    def step(tokens, t, cache):
      logits, cache = model.apply(variables, tokens, t, langs, cache, method="decode_step")
      if allowed is not None:
        logits = jnp.where(allowed, logits, -jnp.inf)
      return logits, cache

    common = dict(eos_id=options.eos_id, pad_id=options.pad_id, length_penalty=length_penalty, block_eos=block_eos)
    if k == 1:
      return greedy_search(step, cache, limits, cap, **common)
    return beam_search(step, cache, limits, cap, beam_size=k, early_stopping=early_stopping, **common)

  return decode


@functools.lru_cache(maxsize=32)
def _jitted_decoder(enc_cfg: TransformerConfig, dec_cfg: TransformerConfig, static: DecodeOptions):
  return jax.jit(make_decoder(enc_cfg, dec_cfg, static))


def _static_part(options: DecodeOptions) -> DecodeOptions:
  """The options that shape the compiled program (the others are traced arguments)."""
  return dataclasses.replace(options, length_penalty=0.0, early_stopping=False, block_eos=False)


def _check_inputs(params, enc_cfg, dec_cfg, src_tokens, src_langs, tgt_lang_ids, options: DecodeOptions) -> None:
  if not isinstance(params, dict) or "encoder" not in params or "decoder" not in params:
    raise UserError("decoding needs NMT parameters {'encoder': ..., 'decoder': ...}; got "
                    f"{sorted(params) if isinstance(params, dict) else type(params).__name__}.")
  if enc_cfg.is_decoder or not dec_cfg.is_decoder:
    raise UserError("decoding needs an encoder config (is_decoder=False) and a decoder config (is_decoder=True).")
  if enc_cfg.emb_dim != dec_cfg.emb_dim:
    raise UserError(f"encoder width {enc_cfg.emb_dim} differs from decoder width {dec_cfg.emb_dim}.")
  options.validate(dec_cfg.vocab_size, dec_cfg.max_positions)
  shape = np.shape(src_tokens)
  if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
    raise UserError(f"src_tokens must be a non-empty int array [batch, length]; got shape {shape}.")
  if not isinstance(src_tokens, jax.core.Tracer):
    ids = np.asarray(src_tokens)
    if ids.min() < 0 or ids.max() >= enc_cfg.vocab_size:
      raise UserError(f"src_tokens hold ids outside the encoder's vocabulary [0, {enc_cfg.vocab_size}).")
  if dec_cfg.has_lang_emb:
    if tgt_lang_ids is None:
      raise UserError("this decoder has language embeddings, which are its only signal of the output language: "
                      "pass tgt_lang_ids (one id per sentence).")
    if np.shape(tgt_lang_ids) != shape[:1]:
      raise UserError(f"tgt_lang_ids must have shape [{shape[0]}] (one per sentence); got {np.shape(tgt_lang_ids)}.")
  for name, langs, n_langs in (("src_langs", src_langs, enc_cfg.n_langs), ("tgt_lang_ids", tgt_lang_ids,
                                                                          dec_cfg.n_langs)):
    if langs is not None and not isinstance(langs, jax.core.Tracer) and np.size(langs):
      values = np.asarray(langs)
      if values.min() < 0 or values.max() >= n_langs:
        raise UserError(f"{name} hold language ids outside [0, {n_langs}).")


def generate(params: Any, enc_cfg: TransformerConfig, dec_cfg: TransformerConfig, src_tokens, src_langs,
             tgt_lang_ids, *, eos_id: int, pad_id: int, beam_size: int = 1, length_penalty: float = 1.0,
             early_stopping: bool = False, max_len_a: float = EVAL_MAX_LEN[0], max_len_b: float = EVAL_MAX_LEN[1],
             max_len: int | None = None, block_eos: bool = False, vocab_mask=None) -> Decoded:
  """Translate a batch: greedy (beam_size=1) or beam search, jitted (one compilation per shape and options).

  src_tokens int [B, S] framed `</s> w... </s>` and right-padded with `pad_id`; src_langs [B] or [B, S] source
  language ids; tgt_lang_ids [B] target language ids. Output rows are framed `</s> ... </s>`, right-padded, at
  most `max_len` (default floor(max_len_a * S + max_len_b)) long and at most floor(max_len_a * src_len +
  max_len_b) for each row's own source length. Use BACKTRANSLATION_MAX_LEN = (1.3, 5) for back-translation.
  `vocab_mask` (bool [n_langs, V] or None): the words each target language may produce (`output_vocab_mask`).
  Raises `UserError` for bad inputs or options.
  """
  options = DecodeOptions(eos_id=int(eos_id), pad_id=int(pad_id), beam_size=beam_size,
                          length_penalty=float(length_penalty), early_stopping=bool(early_stopping),
                          max_len_a=float(max_len_a), max_len_b=float(max_len_b), max_len=max_len,
                          block_eos=bool(block_eos))
  _check_inputs(params, enc_cfg, dec_cfg, src_tokens, src_langs, tgt_lang_ids, options)
  if vocab_mask is not None:
    check_vocab_mask(vocab_mask, dec_cfg, options.eos_id)
  decode = _jitted_decoder(enc_cfg, dec_cfg, _static_part(options))
  return decode(params, src_tokens, src_langs, tgt_lang_ids, jnp.float32(options.length_penalty),
                jnp.bool_(options.early_stopping), jnp.bool_(options.block_eos), vocab_mask)


def output_vocab_mask(token_counts: dict[int, np.ndarray], n_langs: int, vocab_size: int, min_count: int,
                      eos_id: int) -> np.ndarray:
  """bool [n_langs, V]: language l may produce the words seen at least `min_count` times in its monolingual text
  (`token_counts[l]`, per-id counts); a language without counts may produce every word; `</s>` always.

  With a shared BPE, an unsupervised model's easiest way to rebuild a back-translated sentence is to copy source
  words into its "translation" (a code of its own). Restricting each output language to words of its own text takes
  that way out of decoding, without parallel data."""
  mask = np.ones((n_langs, vocab_size), bool)
  for lang, counts in token_counts.items():
    counts = np.asarray(counts)
    if counts.shape != (vocab_size,):
      raise ValueError(f"token counts of language {lang} have shape {counts.shape}, expected ({vocab_size},)")
    mask[lang] = counts >= min_count
  mask[:, eos_id] = True
  return mask


def check_vocab_mask(vocab_mask, dec_cfg: TransformerConfig, eos_id: int) -> None:
  shape = np.shape(vocab_mask)
  if shape != (dec_cfg.n_langs, dec_cfg.vocab_size):
    raise UserError(f"vocab_mask must have shape [n_langs={dec_cfg.n_langs}, vocab_size={dec_cfg.vocab_size}]; "
                    f"got {shape}.")
  if not isinstance(vocab_mask, jax.core.Tracer) and not np.all(np.asarray(vocab_mask)[:, eos_id]):
    raise UserError(f"vocab_mask forbids </s> (id {eos_id}) for some language: no sentence could end.")


def to_lists(decoded: Decoded, eos_id: int) -> list[list[int]]:
  """The best hypotheses as Python lists of token ids, without the framing `</s>`s (host-side)."""
  tokens, lengths = np.asarray(decoded.tokens), np.asarray(decoded.lengths)
  rows = []
  for row, n in zip(tokens, lengths):
    words = row[1:int(n) - 1].tolist()
    if int(n) < 2 or row[0] != eos_id or row[int(n) - 1] != eos_id:
      raise ValueError(f"malformed decoded row {row.tolist()} (length {int(n)})")
    rows.append(words)
  return rows
