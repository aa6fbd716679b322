"""Prove a conversion on logits: run our bundle and the transformers model on one fixed batch, compare.

The reference is the transformers model run in float64, so the figure is the error of our float32 computation
alone, not the sum of two stacks' float32 rounding; the float32 run of transformers is compared too, and its own
distance to float64 is the noise floor of float32 for that model. A conversion passes when max |Δlogit| is within
the tolerance (1e-4) or, for large models whose float32 rounding alone exceeds it, within twice transformers' own
float32 error (a real mapping bug - a missing bias, a forgotten transpose, tanh-GELU - is far above both).

The batch is what makes a comparison meaningful for XLM: several rows, right-padded (so the padding mask is
exercised), `</s>`-framed, with per-token language ids that change inside a row (TLM style), so that missing or
swapped language embeddings show. Only non-pad positions are compared (transformers leaves padded rows to the
mask multiply, as we do, but their values are not part of the contract). Both sides run in float32; JAX at the
highest matmul precision (TF32 on GPUs would cost ~1e-3).

torch and transformers are optional: `missing_dependencies()` says what is absent and the converter then skips
the check (and says so). A random, untouched model hides bugs (zero biases, identity LayerNorms, near-uniform
attention), which is why the tests perturb every weight before converting.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

import numpy as np

from xlm_jax.errors import UserError

TOLERANCE = 1e-4
PROBES = {
    "en": "The quick brown fox, Mr. Smith's dog, jumps over 3.5 lazy dogs!",
    "fr": "L'été dernier, nous sommes allés à Paris - c'était « magnifique ».",
    "de": "Die Straße war über 100 Meter lang; Jürgen lief schnell.",
    "ro": "Şeful a spus că ţara şi orașul sunt în regulă.",
    "ru": "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "el": "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο.",
    "es": "¿Dónde está la biblioteca? Está allí, señor.",
}


NOISE_FACTOR = 2.0


@dataclasses.dataclass
class ParityResult:
  """max_abs_diff: ours (float32) vs transformers in float64; max_abs_diff_float32: ours vs transformers in
  float32; reference_float32_error: transformers float32 vs float64 (the float32 noise floor of this model)."""

  max_abs_diff: float
  n_positions: int
  max_abs_logit: float
  max_abs_diff_float32: float = float("nan")
  reference_float32_error: float = 0.0
  tokenizer_sentences: int = 0

  def passes(self, tolerance: float = TOLERANCE) -> bool:
    return self.max_abs_diff <= max(tolerance, NOISE_FACTOR * self.reference_float32_error)

  def line(self, tolerance: float = TOLERANCE) -> str:
    text = (f"parity: max |Δlogit| = {self.max_abs_diff:.3g} against transformers in float64 "
            f"({self.max_abs_diff_float32:.3g} against its float32 run, whose own float32 error is "
            f"{self.reference_float32_error:.3g}) over {self.n_positions} positions, |logit| up to "
            f"{self.max_abs_logit:.3g}; tolerance {tolerance:g}")
    if self.max_abs_diff > tolerance and self.passes(tolerance):
      text += " (exceeded, but within float32 rounding of this model: accepted)"
    if self.tokenizer_sentences:
      text += f"; tokenizer ids equal to XLMTokenizer on {self.tokenizer_sentences} sentences"
    return text


def missing_dependencies() -> str | None:
  """None when torch and transformers import, else which is missing and how to install it."""
  missing = []
  for name in ("torch", "transformers"):
    try:
      __import__(name)
    except ImportError:
      missing.append(name)
  if not missing:
    return None
  return (f"{' and '.join(missing)} not installed (pip install torch==2.13.0 transformers==5.24.0, CPU build of "
          "torch)")


def _quiet_transformers() -> None:
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  import transformers
  transformers.utils.logging.set_verbosity_error()
  transformers.utils.logging.disable_progress_bar()


def fixed_batch(vocab_size: int, n_langs: int, max_positions: int, pad_id: int, eos_id: int,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(ids, langs), int32 [3, L]: `</s> ... </s>` rows of lengths L, L-4 and 3, right-padded; the language changes
  half-way through each row (pads carry the second language)."""
  length = max(3, min(16, max_positions))
  lengths = [length, max(3, length - 4), 3]
  rng = np.random.default_rng(seed)
  low = 14 if vocab_size > 28 else 0
  allowed = np.array([i for i in range(low, vocab_size) if i not in (pad_id, eos_id)])
  ids = np.full((3, length), pad_id, np.int32)
  langs = np.zeros((3, length), np.int32)
  for row, n in enumerate(lengths):
    ids[row, :n] = rng.choice(allowed, size=n)
    ids[row, 0] = ids[row, n - 1] = eos_id
    first, second = row % n_langs, (row + 1) % n_langs
    langs[row, : n // 2] = first
    langs[row, n // 2:] = second
  return ids, langs


def hf_model_from_dir(path: str):
  _quiet_transformers()
  from transformers import XLMWithLMHeadModel
  import torch
  try:
    model = XLMWithLMHeadModel.from_pretrained(path, dtype=torch.float32)
  except Exception as e:  # noqa: BLE001 - report any failure of transformers to load it
    raise UserError(f"transformers cannot load {path}: {str(e).strip().splitlines()[0][:200]}") from None
  return model.eval()


def hf_model_from_state(state: Mapping[str, np.ndarray], hf_config: Mapping[str, Any]):
  """An XLMWithLMHeadModel built from a config dict and XLM-named tensors (no `transformer.` prefix)."""
  _quiet_transformers()
  import torch
  from transformers import XLMConfig, XLMWithLMHeadModel
  config = XLMConfig(**{k: v for k, v in hf_config.items() if k not in ("architectures", "model_type", "xlm_jax")})
  model = XLMWithLMHeadModel(config).eval()
  torch_state = {(k if k.startswith("pred_layer.") else "transformer." + k): torch.from_numpy(np.array(v, np.float32))
                 for k, v in state.items() if k != "pred_layer.proj.weight"}
  result = model.load_state_dict(torch_state, strict=False)
  missing = [k for k in result.missing_keys if k not in ("pred_layer.proj.weight", "transformer.position_ids")]
  if missing or result.unexpected_keys:
    raise UserError(f"the reference transformers model does not take these weights (missing {missing[:4]}, "
                    f"unexpected {list(result.unexpected_keys)[:4]}).")
  model.tie_weights()
  return model


def hf_logits(model, ids: np.ndarray, langs: np.ndarray | None) -> np.ndarray:
  import torch
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(ids.astype(np.int64)),
                langs=None if langs is None else torch.from_numpy(langs.astype(np.int64)))
  return out.logits.numpy()


def bundle_logits(bundle, ids: np.ndarray, langs: np.ndarray) -> np.ndarray:
  import jax
  with jax.default_matmul_precision("highest"):
    return np.asarray(bundle.logits(ids, langs=langs), np.float32)


def compare_logits(ours: np.ndarray, exact: np.ndarray, theirs32: np.ndarray, ids: np.ndarray,
                   pad_id: int) -> ParityResult:
  keep = np.cumprod(ids != pad_id, axis=1).astype(bool)  # right padding: everything before the first pad
  ours, exact, theirs32 = (np.asarray(x, np.float64)[keep] for x in (ours, exact, theirs32))
  return ParityResult(max_abs_diff=float(np.abs(ours - exact).max()), n_positions=int(keep.sum()),
                      max_abs_logit=float(np.abs(exact).max()),
                      max_abs_diff_float32=float(np.abs(ours - theirs32).max()),
                      reference_float32_error=float(np.abs(theirs32 - exact).max()))


def check_bundle(bundle, hf_model, seed: int = 0) -> ParityResult:
  """Logit differences between `bundle` (its encoder) and `hf_model` on the fixed batch. `hf_model` is run in
  float32, then converted to float64 in place (no second copy of the weights) and run again."""
  cfg = bundle.model_config
  ids, langs = fixed_batch(cfg.vocab_size, cfg.n_langs, cfg.max_positions, cfg.pad_id, bundle.tokenizer.eos_id,
                           seed)
  ours = bundle_logits(bundle, ids, langs)
  theirs32 = hf_logits(hf_model.float(), ids, langs)
  exact = hf_logits(hf_model.double(), ids, langs)
  return compare_logits(ours, exact, theirs32, ids, cfg.pad_id)


def hf_tokenizer(vocab_file: str, merges_file: str, lowercase: bool):
  _quiet_transformers()
  from transformers import XLMTokenizer
  return XLMTokenizer(vocab_file, merges_file, do_lowercase_and_remove_accent=lowercase)


def hf_tokenizer_from_dir(path: str):
  _quiet_transformers()
  from transformers import XLMTokenizer
  return XLMTokenizer.from_pretrained(path)


def hf_ids(hf_tok, text: str, lang: str) -> list[int]:
  """XLMTokenizer's ids for `text` in `lang`, unframed. Uses the language-aware `_tokenize`: transformers 5.24's
  public `tokenize()/encode()` drop the `lang` argument and tokenise everything as English."""
  return hf_tok.convert_tokens_to_ids(hf_tok._tokenize(text, lang=lang))


def check_tokenizer(ours, hf_tok, languages: Sequence[str]) -> int:
  """Compare ids on one probe sentence per language (English text for languages without a probe)."""
  n = 0
  for lang in languages:
    if lang in ("zh", "th", "ja"):
      continue
    text = PROBES.get(lang, PROBES["en"])
    mine, theirs = ours.encode(text, lang), hf_ids(hf_tok, text, lang)
    if mine != theirs:
      raise UserError(f"tokenizer mismatch on the {lang} probe sentence: xlm_jax gives {mine[:12]}..., "
                      f"XLMTokenizer {theirs[:12]}...; the conversion is not faithful.")
    n += 1
  return n
