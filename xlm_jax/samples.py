"""Text samples written during training (TensorBoard text, `kind: text` records in metrics.jsonl): what a person
looks at to judge a model that the loss curve alone does not show.

`fill_in_samples` is the pretraining task's `extra_eval`: for a few held-out sentences per language, the middle
word replaced by `<mask>` and the model's three most probable tokens beside the answer. NMT writes its sample
translations itself (`config.nmt.sample_translations`).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax


def masked_middle(text: str) -> tuple[str, str] | None:
  """(the text with its middle word replaced by `<mask>`, that word); None for texts under 3 words."""
  words = text.split()
  if len(words) < 3:
    return None
  i = len(words) // 2
  return " ".join(words[:i] + ["<mask>"] + words[i + 1:]), words[i]


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
        masked = masked_middle(text)
        if masked is None:
          continue
        top = bundle.fill_mask(masked[0], lang, top_k=3)[0]
        rows.append(f"{masked[0]}  \nanswer: {masked[1]}; model: " + ", ".join(f"{p} ({q:.2f})" for p, q in top))
      if rows:
        out[f"fill_in_{lang}"] = "\n\n".join(rows)
    return out

  return run
