"""What notebooks and users call: `xlm_jax.load(path)` -> `Bundle`.

    import xlm_jax
    b = xlm_jax.load("runs/demo")                  # a workdir (newest step) or one checkpoint step directory
    ids = b.encode(["a sentence"], lang="xa")      # int32 [B, L]: `</s> ... </s>`, right-padded with <pad>
    h = b.hidden_states(ids, langs="xa")           # float32 [B, L, D], last layer, zero on padding
    z = b.logits(ids, langs="xa")                  # float32 [B, L, V]

`langs` is one language code for all tokens, or an int array of language ids (one per token, or one per row);
it is ignored by models without language embeddings. Positions default to 0..L-1 in every row. The padding mask
comes from the pad id, so inputs must be right-padded, as in the reference.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from xlm_jax import checkpoint as ckpt
from xlm_jax.errors import UserError
from xlm_jax.model import Transformer, TransformerConfig
from xlm_jax.tokenizer import Tokenizer, frame, tokenizer_from_state


class Bundle:
  """A loaded checkpoint: model config, parameters, tokenizer and language map, with inference helpers."""

  def __init__(self, params: Any, meta: dict, path: str = ""):
    self.meta = meta
    self.path = path
    self.params = params
    self.config = meta.get("config", {})
    self.languages: list[str] = list(meta.get("languages", []))
    self.lang2id = {lang: i for i, lang in enumerate(self.languages)}
    self.tokenizer: Tokenizer = tokenizer_from_state(meta["tokenizer"])
    self.architecture = meta.get("architecture", "encoder")
    self.model_config = TransformerConfig.from_dict(meta["model"])
    self.decoder_config = (TransformerConfig.from_dict(meta["decoder_model"]) if "decoder_model" in meta else None)
    if self.model_config.vocab_size != self.tokenizer.vocab_size:
      raise UserError(f"bundle {path!r}: the tokenizer has {self.tokenizer.vocab_size} tokens but the model "
                      f"{self.model_config.vocab_size}; the bundle is inconsistent.")
    # parameters come back unrolled (checkpoint.restore_params), whatever layout the run trained in
    self.model = Transformer(self.model_config.replace(dtype="float32", dropout=0.0, attention_dropout=0.0,
                                                       scan_layers=False))
    self._warned_langs = False

  @property
  def encoder_params(self):
    return self.params["encoder"] if self.architecture == "encoder_decoder" else self.params

  def lang_id(self, lang: str) -> int:
    if lang not in self.lang2id:
      raise UserError(f"unknown language {lang!r}; this model knows {self.languages}.")
    return self.lang2id[lang]

  def encode(self, texts: Sequence[str], lang: str | None = None) -> np.ndarray:
    """Framed token ids `</s> w... </s>`, int32 [B, L], right-padded with the pad id."""
    if isinstance(texts, str):
      texts = [texts]
    if lang is not None:
      self.lang_id(lang)
    rows = [frame(self.tokenizer.encode(t, lang), self.tokenizer.eos_id) for t in texts]
    limit = self.model_config.max_positions
    too_long = [i for i, r in enumerate(rows) if len(r) > limit]
    if too_long:
      raise UserError(f"text {too_long[0]} has {len(rows[too_long[0]])} tokens with framing; the model takes at "
                      f"most {limit}. Split it.")
    length = max((len(r) for r in rows), default=2)
    ids = np.full((len(rows), length), self.tokenizer.pad_id, np.int32)
    for i, r in enumerate(rows):
      ids[i, :len(r)] = r
    return ids

  def _langs_array(self, ids: np.ndarray, langs) -> np.ndarray | None:
    if not self.model_config.has_lang_emb:
      return None
    if langs is None:
      if not self._warned_langs:
        warnings.warn("this model has language embeddings but no `langs` was given; none is added (as in the "
                      "reference). Pass langs='<code>' to use them.", stacklevel=3)
        self._warned_langs = True
      return None
    if isinstance(langs, str):
      return np.full(ids.shape, self.lang_id(langs), np.int32)
    arr = np.asarray(langs, np.int32)
    if arr.ndim == 1 and arr.shape[0] == ids.shape[0]:
      arr = np.broadcast_to(arr[:, None], ids.shape)
    if arr.shape != ids.shape:
      raise UserError(f"langs has shape {arr.shape}; give one code, one id per row {ids.shape[:1]} or one per "
                      f"token {ids.shape}.")
    if arr.min() < 0 or arr.max() >= self.model_config.n_langs:
      raise UserError(f"language ids must be in 0..{self.model_config.n_langs - 1}, got {arr.min()}..{arr.max()}.")
    return np.ascontiguousarray(arr)

  def _inputs(self, ids, langs, positions):
    ids = np.asarray(ids, np.int32)
    if ids.ndim == 1:
      ids = ids[None]
    langs_arr = self._langs_array(ids, langs)
    pos = None if positions is None else np.asarray(positions, np.int32)
    if ids.shape[1] > self.model_config.max_positions and pos is None:
      raise UserError(f"{ids.shape[1]} tokens per row; the model takes at most {self.model_config.max_positions}.")
    return ids, langs_arr, pos

  def hidden_states(self, ids, langs=None, positions=None) -> np.ndarray:
    """Last-layer hidden states, float32 [B, L, D]."""
    ids, langs_arr, pos = self._inputs(ids, langs, positions)
    return np.asarray(_encode_fn(self.model)(self.encoder_params, ids, pos, langs_arr))

  def logits(self, ids, langs=None, positions=None) -> np.ndarray:
    """MLM/CLM output logits, float32 [B, L, V]."""
    ids, langs_arr, pos = self._inputs(ids, langs, positions)
    return np.asarray(_logits_fn(self.model)(self.encoder_params, ids, pos, langs_arr))

  def translate(self, texts: Sequence[str], src: str, tgt: str, beam: int = 4, length_penalty: float = 1.0,
                early_stopping: bool = False, batch_size: int = 64) -> list[str]:
    """Translate raw sentences from `src` into `tgt` (NMT bundles). Output i translates input i; empty stays
    empty. Uses the same decoder as validation BLEU and back-translation (`xlm_jax.decode`)."""
    if self.architecture != "encoder_decoder" or self.decoder_config is None:
      raise UserError(f"bundle {self.path!r} is a pretrained encoder, not a translation model; train one with "
                      "config.task='nmt' (configs/nmt.py) or convert an XLM MT checkpoint.")
    from xlm_jax.translate import translate_texts
    if isinstance(texts, str):
      texts = [texts]
    return translate_texts(self.params, self.model_config, self.decoder_config, self.tokenizer, list(texts), src,
                           tgt, self.languages, beam_size=beam, length_penalty=length_penalty,
                           early_stopping=early_stopping, batch_size=batch_size)

  def fill_mask(self, text: str, lang: str, top_k: int = 5) -> list[list[tuple[str, float]]]:
    """For each `<mask>` in `text`, the `top_k` most probable tokens and their probabilities."""
    ids = self.encode([text], lang)
    where = np.flatnonzero(ids[0] == self.tokenizer.mask_id)
    if where.size == 0:
      raise UserError("the text has no <mask>.")
    probs = jax.nn.softmax(self.logits(ids, langs=lang)[0, where], axis=-1)
    out = []
    for row in np.asarray(probs):
      best = np.argsort(-row)[:top_k]
      out.append([(self.tokenizer.id_to_piece(int(i)), float(row[i])) for i in best])
    return out


@functools.lru_cache(maxsize=8)
def _encode_fn(model: Transformer):
  return jax.jit(lambda p, ids, pos, langs: model.apply({"params": p}, ids, pos, langs, method="encode"))


@functools.lru_cache(maxsize=8)
def _logits_fn(model: Transformer):
  return jax.jit(lambda p, ids, pos, langs: model.apply({"params": p}, ids, pos, langs))


def load(path: str) -> Bundle:
  """Open a bundle: a workdir (its newest complete checkpoint), a checkpoints directory or one step directory.

  Checks the bundle format and that tokenizer, model config and parameter shapes agree; parameters come back on
  the default device.
  """
  params, meta = ckpt.restore_params(path)
  bundle = Bundle(jax.tree.map(jnp.asarray, params), meta, path)
  from xlm_jax.model import init_params
  import flax.linen as nn
  shapes = lambda cfg: nn.unbox(jax.eval_shape(lambda: init_params(cfg, jax.random.key(0))))
  if bundle.architecture == "encoder":
    ckpt.check_same_shapes(shapes(bundle.model_config), params, f"bundle {path!r}")
  elif bundle.decoder_config is not None:
    expected = {"encoder": shapes(bundle.model_config), "decoder": shapes(bundle.decoder_config)}
    ckpt.check_same_shapes(expected, params, f"bundle {path!r}")
  return bundle
