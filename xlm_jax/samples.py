"""Text samples written during training (TensorBoard text, `kind: text` records in metrics.jsonl): what a person
looks at to judge a model that the loss curve alone does not show.

`fill_in_samples` is the pretraining task's `extra_eval`: for a few held-out sentences per language, the middle
word masked (`fill_word`) and the model's guess beside the answer. NMT writes its sample translations itself
(`config.nmt.sample_translations`).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np


def masked_middle(text: str) -> tuple[str, str] | None:
  """(the text with its middle word replaced by `<mask>`, that word); None for texts under 3 words."""
  words = text.split()
  if len(words) < 3:
    return None
  i = len(words) // 2
  return " ".join(words[:i] + ["<mask>"] + words[i + 1:]), words[i]


def fill_word(bundle, text: str, lang: str, context: str | None = None,
              context_lang: str | None = None) -> dict | None:
  """Mask every subword piece of the middle word of `text` (one `<mask>` per piece, as MLM training masks) and
  read the model's most probable piece at each: {'masked': text with the word shown as one <mask>, 'answer',
  'model': the guessed word, 'p': the product of the pieces' probabilities, 'right': all pieces right}.
  With `context` in `context_lang`, the row is a TLM row with the translation first (`Bundle.fill_mask`).
  None for texts under 3 words."""
  masked = masked_middle(text)
  if masked is None:
    return None
  shown, word = masked
  truth = bundle.tokenizer.encode(word, lang)
  top = bundle.fill_mask(shown.replace("<mask>", "<mask>" * len(truth)), lang, top_k=1, context=context,
                         context_lang=context_lang)
  pieces = [best[0] for best, in top]
  guess = "".join(pieces).replace("\u2581", " ").strip()
  right = pieces == [bundle.tokenizer.id_to_piece(i) for i in truth]
  return {"masked": shown, "answer": word, "model": guess, "p": float(np.prod([q for (_, q), in top])),
          "right": bool(right)}


def fill_in_samples(meta: Mapping, sentences: Mapping[str, Sequence[str]]) -> Callable[[Any, int], dict[str, str]]:
  """extra_eval(params, step) -> {'fill_in_<lang>': markdown text}. The trap: with several processes the
  parameters are not all addressable here, so it returns nothing there (the samples are for people, not for
  the metrics)."""

  def run(params, step: int) -> dict[str, str]:
    if jax.process_count() > 1:
      return {}
    from xlm_jax.api import Bundle
    bundle = Bundle(params, dict(meta))
    out = {}
    for lang, texts in sentences.items():
      rows = []
      for text in texts:
        fill = fill_word(bundle, text, lang)
        if fill is not None:
          rows.append(f"{fill['masked']}  \nanswer: {fill['answer']}; model: {fill['model']} (p={fill['p']:.2f})")
      if rows:
        out[f"fill_in_{lang}"] = "\n\n".join(rows)
    return out

  return run
