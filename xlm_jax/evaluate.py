"""Held-out measurements beyond the training losses: what TLM buys (translation context), per-language tables.

`tlm_context_accuracy` answers the question TLM exists for: are masked words of a sentence predicted better when
its translation is in the row? For each validation pair (context l1, target l2) the same deterministic 15% of the
target's words are replaced by <mask>; the row is scored twice, with the context sentence present, and with the
context replaced by padding (segment 0: nothing attends to it). Positions and language ids of the target half
are identical in both conditions.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from xlm_jax.data.masking import mlm_slots
from xlm_jax.data.packing import tlm_example
from xlm_jax.model import Transformer, TransformerConfig


@functools.lru_cache(maxsize=4)
def _scorer(cfg: TransformerConfig):
  model = Transformer(cfg.replace(dropout=0.0, attention_dropout=0.0))

  def score(params, tokens, positions, langs, segments, index, targets, weights):
    hidden = model.apply({"params": params}, tokens, positions, langs, segments, rows=index, method="encode")
    logits = model.apply({"params": params}, hidden, method="predict")
    logp = jax.nn.log_softmax(logits, -1)
    nll = -jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
    correct = (jnp.argmax(logits, -1) == targets)
    return jnp.sum(nll * weights), jnp.sum(correct * weights), jnp.sum(weights)

  return jax.jit(score)


def tlm_context_accuracy(params, cfg: TransformerConfig, pairs: Sequence[tuple[np.ndarray, np.ndarray]],
                         lang1: int, lang2: int, *, eos_id: int, pad_id: int, mask_id: int, length: int,
                         word_pred: float = 0.15, batch_size: int = 64, seed: int = 0) -> dict[str, float]:
  """Accuracy and perplexity on masked tokens of the second sentence of each pair, with and without the first.

  `pairs` holds (context ids, target ids) without framing; pairs whose example exceeds `length` are skipped.
  Returns {'with_context_acc', 'without_context_acc', 'with_context_ppl', 'without_context_ppl', 'n_masked',
  'n_pairs'}.
  """
  rng = np.random.default_rng(seed)
  n_slots = mlm_slots(length, word_pred)
  rows = {True: [], False: []}
  for ctx, tgt in pairs:
    tokens, positions, langs = tlm_example(np.asarray(ctx), np.asarray(tgt), lang1, lang2, eos_id)
    if len(tokens) > length or len(tgt) == 0:
      continue
    start = len(ctx) + 2  # the target half: </s> t1 ... tn </s>
    words = np.arange(start + 1, len(tokens) - 1)
    n = min(max(1, int(round(word_pred * len(words)))), n_slots)
    chosen = np.sort(rng.choice(words, size=n, replace=False))
    masked = tokens.copy()
    masked[chosen] = mask_id
    index = np.zeros(n_slots, np.int32)
    targets = np.zeros(n_slots, np.int32)
    weights = np.zeros(n_slots, np.float32)
    index[:n], targets[:n], weights[:n] = chosen, tokens[chosen], 1.0
    for with_context in (True, False):
      t = np.full(length, pad_id, np.int32)
      p = np.zeros(length, np.int32)
      l = np.full(length, lang2, np.int32)
      s = np.zeros(length, np.int32)
      t[:len(tokens)], p[:len(tokens)], l[:len(tokens)] = masked, positions, langs
      s[:len(tokens)] = 1
      if not with_context:
        t[:start], s[:start] = pad_id, 0
      rows[with_context].append((t, p, l, s, index, targets, weights))
  score = _scorer(cfg)
  out = {"n_pairs": len(rows[True])}
  for with_context, name in ((True, "with_context"), (False, "without_context")):
    nll = correct = count = 0.0
    data = rows[with_context]
    for i in range(0, len(data), batch_size):
      chunk = data[i:i + batch_size]
      while len(chunk) < batch_size:  # constant shapes: pad the last batch with weight-0 copies
        chunk = chunk + [chunk[0][:-1] + (np.zeros(n_slots, np.float32),)]
      arrays = [jnp.asarray(np.stack([r[k] for r in chunk])) for k in range(7)]
      a, b, c = score(params, *arrays)
      nll, correct, count = nll + float(a), correct + float(b), count + float(c)
    out[f"{name}_acc"] = correct / max(count, 1.0)
    out[f"{name}_ppl"] = float(np.exp(nll / max(count, 1.0)))
    out["n_masked"] = count
  return out


def bleu(hypotheses: Sequence[str], references: Sequence[str], target_lang: str) -> dict:
  """Detokenized sacreBLEU (the number to report, with its signature) and, for comparison with 2019 papers,
  tokenized BLEU: both sides Moses-tokenized for `target_lang`, scored without further tokenization (what
  multi-bleu.perl on tokenized text gives)."""
  from sacrebleu.metrics import BLEU
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
  metric = BLEU()
  score = metric.corpus_score(list(hypotheses), [list(references)])
  out = {"bleu": float(score.score), "signature": str(metric.get_signature())}
  try:
    from sacremoses import MosesTokenizer
    moses = MosesTokenizer(lang=target_lang)
    tok = lambda s: moses.tokenize(s, return_str=True, escape=False)
    # force: the text is tokenized on purpose (sacreBLEU would warn, once per call, that it looks tokenized)
    tokenized = BLEU(tokenize="none", force=True).corpus_score([tok(h) for h in hypotheses],
                                                              [[tok(r) for r in references]])
    out["tokenized_bleu"] = float(tokenized.score)
  except ImportError:  # sacremoses is in requirements.txt; stay usable without it
    pass
  return out


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
  """sacreBLEU's chrF (character n-gram F-score, 0-100): kinder than BLEU to near-miss word forms."""
  from sacrebleu.metrics import CHRF
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
  return float(CHRF().corpus_score(list(hypotheses), [list(references)]).score)


def unigram_counts(tokenizer, texts: Sequence[str], lang: str | None, vocab_size: int) -> np.ndarray:
  """Token counts over `texts` (unframed): the unigram model a masked-LM accuracy has to beat."""
  counts = np.zeros(vocab_size, np.int64)
  for text in texts:
    np.add.at(counts, np.asarray(tokenizer.encode(text, lang), np.int64), 1)
  return counts


def masked_lm_accuracy(bundle, texts: Sequence[str], lang: str, counts: np.ndarray, *, rate: float = 0.15,
                       seed: int = 0) -> dict[str, float]:
  """Held-out MLM next to its unigram baseline, on the same masked tokens.

  In each sentence `rate` of the word tokens (not the framing `</s>`; at least one) are replaced by <mask>,
  chosen with a fixed seed; the model predicts them from the rest of the sentence. The unigram baseline
  predicts every masked token as the most frequent token of `counts` (training text) and scores perplexity with
  add-one-smoothed unigram probabilities. Returns {'acc', 'ppl', 'unigram_acc', 'unigram_ppl', 'n_masked'}.
  """
  tok = bundle.tokenizer
  rng = np.random.default_rng(seed)
  ids = bundle.encode(list(texts), lang)
  lengths = (ids != tok.pad_id).sum(1)
  masked = ids.copy()
  where = np.zeros(ids.shape, bool)
  for i, n in enumerate(lengths):
    words = np.arange(1, n - 1)
    if len(words) == 0:
      continue
    chosen = rng.choice(words, size=max(1, int(round(rate * len(words)))), replace=False)
    where[i, chosen] = True
  masked[where] = tok.mask_id
  logits = bundle.logits(masked, langs=lang)[where]
  truth = ids[where]
  logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
  unigram = (counts + 1.0) / (counts.sum() + len(counts))
  return {"acc": float(np.mean(logits.argmax(-1) == truth)),
          "ppl": float(np.exp(-np.mean(np.take_along_axis(logp, truth[:, None], -1)))),
          "unigram_acc": float(np.mean(truth == int(np.argmax(counts)))),
          "unigram_ppl": float(np.exp(-np.mean(np.log(unigram[truth])))), "n_masked": int(where.sum())}
