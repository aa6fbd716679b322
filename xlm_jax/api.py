"""What notebooks and users call: `xlm_jax.load(path)` -> `Bundle`.

    import xlm_jax
    b = xlm_jax.load("runs/demo")                  # a workdir (newest step) or one checkpoint step directory
    ids = b.encode(["a sentence"], lang="xa")      # int32 [B, L]: `</s> ... </s>`, right-padded with <pad>
    h = b.hidden_states(ids, langs="xa")           # float32 [B, L, D], last layer, zero on padding
    z = b.logits(ids, langs="xa")                  # float32 [B, L, V]
    hs = b.hidden_states(ids, langs="xa", all_layers=True)   # [n_layers + 1, B, L, D]: embeddings, then each layer
    e = b.embed(["a sentence"], lang="xa")         # [B, D] sentence embeddings
    b.fill_mask("a <mask> sentence", lang="xa", context="its translation", context_lang="xb")   # TLM fill-in
    b.metrics()                                    # the run's curves (`xlm_jax.report.read_metrics`)
    c = xlm_jax.load("runs/xnli")                  # a classifier (config.task='classify')
    c.labels                                       # label names, in the head's order
    c.classify(["a premise"], ["a hypothesis"], lang="de")        # -> ['entailment']
    c.class_probabilities(["a premise"], ["a hypothesis"], lang="de")   # float32 [B, n_labels]

`langs` is one language code for all tokens, or an int array of language ids (one per token, or one per row);
it is ignored by models without language embeddings. Positions default to 0..L-1 in every row. The padding mask
comes from the pad id, so inputs must be right-padded, as in the reference.

Shapes: the model runs on batches of at most `BATCH` rows whose width is rounded up to a multiple of `BUCKET`
(and whose row count to a power of two), padded with <pad>, so calls with new lengths or batch sizes reuse a few
compiled programs instead of compiling each time; results are cut back to the input's shape.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from xlm_jax import checkpoint as ckpt
from xlm_jax import paths
from xlm_jax.errors import UserError
from xlm_jax.model import Transformer, TransformerConfig
from xlm_jax.tokenizer import Tokenizer, frame, tokenizer_from_state

BUCKET = 16   # widths are rounded up to a multiple of this
BATCH = 32    # rows per model call at most


def _bucket_rows(n: int) -> int:
  return min(BATCH, 1 << max(0, (n - 1).bit_length()))


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
                                                       scan_layers=False, remat="none"))
    self._warned_langs = False

  def __repr__(self) -> str:
    cfg = self.model_config
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.params))
    kind = "encoder-decoder (translation)" if self.architecture == "encoder_decoder" else (
        "causal LM" if cfg.causal else "encoder (MLM)")
    lines = [f"Bundle({self.path!r}, step {self.meta.get('step', self.meta.get('_step', '?'))})",
             f"  {self.meta.get('task', '?')}: {kind}, {cfg.n_layers} layers, d={cfg.emb_dim}, {cfg.n_heads} heads, "
             f"{n_params / 1e6:.2f}M parameters",
             f"  languages: {' '.join(self.languages) or '-'}; vocabulary {self.tokenizer.vocab_size} "
             f"({type(self.tokenizer).__name__})"]
    shown = {k: v for k, v in sorted(self.meta.get("metrics", {}).items())
             if isinstance(v, (int, float)) and (k.endswith("_acc") or k.startswith("bleu_"))}
    if shown:
      lines.append("  held-out: " + ", ".join(f"{k}={v:.3g}" for k, v in list(shown.items())[:12]))
    return "\n".join(lines)

  @property
  def workdir(self) -> str:
    """The run directory the bundle came from (where metrics.jsonl lives)."""
    root = self.meta.get("_root", self.path)
    return paths.dirname(root) if paths.basename(root) == "checkpoints" else root

  def held_out(self, lang: str, other: str | None = None, split: str = "valid", n: int = 200) -> list:
    """The first `n` sentences of `split` in `lang` from the corpus this bundle was trained on (the run's
    config.data.corpus; a generated corpus is read from, or regenerated into, the run's workdir); with `other`,
    aligned (lang, other) pairs."""
    import itertools

    import ml_collections

    from xlm_jax.run_setup import make_corpus
    for code in (lang, other):
      if code is not None:
        self.lang_id(code)
    corpus = make_corpus(ml_collections.ConfigDict(self.config), self.workdir, self.languages)
    texts = corpus.mono(split, lang) if other is None else corpus.para(split, lang, other)
    return list(itertools.islice(texts(), n))

  def metrics(self):
    """The run's training and held-out curves and text samples (`xlm_jax.report.read_metrics`)."""
    from xlm_jax.report import read_metrics
    return read_metrics(self.workdir)

  @property
  def encoder_params(self):
    return self.params["encoder"] if self.architecture in ("encoder_decoder", "classifier") else self.params

  @property
  def labels(self) -> list[str] | None:
    """The label names of a classifier bundle, in the order of the head's outputs (None for other bundles)."""
    return list(self.meta["labels"]) if self.architecture == "classifier" else None

  def class_probabilities(self, first: Sequence[str], second: Sequence[str] | None = None, lang: str = "en",
                          batch_size: int = BATCH) -> np.ndarray:
    """Class probabilities float32 [B, len(labels)] of sentences (`first`) or sentence pairs (`first[i]`,
    `second[i]`) in `lang`, framed as the classifier was trained: `</s> a </s> b </s>` (or `</s> a </s>`) with the
    language id on every token, truncated to the training row length (the longer side first)."""
    if self.architecture != "classifier":
      raise UserError(f"bundle {self.path!r} is not a classifier (it is a {self.meta.get('task', '?')} bundle); "
                      "fine-tune one with config.task='classify' (configs/classify.py).")
    from xlm_jax.model import Classifier
    from xlm_jax.train.classify import truncate_pair
    first = [first] if isinstance(first, str) else list(first)
    second = None if second is None else ([second] if isinstance(second, str) else list(second))
    if bool(self.meta.get("pair")) != (second is not None):
      kind, call = ("sentence pairs", "first, second") if self.meta.get("pair") else ("single sentences", "first")
      raise UserError(f"this classifier was trained on {kind}; call classify({call}, lang=...).")
    if second is not None and len(second) != len(first):
      raise UserError(f"classify: {len(first)} first sentences but {len(second)} second ones; give one per pair.")
    lang_id = self.lang_id(lang)
    row_length = int(self.config.get("classify", {}).get("row_length", self.model_config.max_positions))
    eos, pad = self.tokenizer.eos_id, self.tokenizer.pad_id
    rows = []
    for i, text in enumerate(first):
      a, b, _ = truncate_pair(self.tokenizer.encode(text, lang),
                              None if second is None else self.tokenizer.encode(second[i], lang), row_length - 2)
      rows.append([eos] + a + ([eos] + b if b is not None else []) + [eos])
    model = Classifier(self.model_config.replace(dtype="float32", dropout=0.0, attention_dropout=0.0,
                                                 scan_layers=False, remat="none"), len(self.labels))
    fn = _classify_fn(model)
    out = []
    for start in range(0, len(rows), batch_size):
      chunk = rows[start:start + batch_size]
      width = -(-max(len(r) for r in chunk) // BUCKET) * BUCKET
      size = _bucket_rows(len(chunk)) if batch_size == BATCH else batch_size
      ids = np.full((size, width), pad, np.int32)
      for k, r in enumerate(chunk):
        ids[k, :len(r)] = r
      langs = np.full(ids.shape, lang_id, np.int32)
      out.append(np.asarray(fn(self.params, ids, langs))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)

  def classify(self, first: Sequence[str], second: Sequence[str] | None = None, lang: str = "en",
               batch_size: int = BATCH) -> list[str]:
    """The label name of each sentence (or pair) in `lang`: the most probable class (`class_probabilities`)."""
    probs = self.class_probabilities(first, second, lang=lang, batch_size=batch_size)
    return [self.labels[int(i)] for i in probs.argmax(-1)]

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

  def _bucketed(self, fn, ids: np.ndarray, langs_arr, pos, batch_axis: int = 0) -> np.ndarray:
    """`fn(params, ids, pos, langs)` over batches of bucketed shape (see the module docstring); output rows are
    along `batch_axis`, tokens along the next axis, both cut back to the input's."""
    n, length = ids.shape
    width = length if length > self.model_config.max_positions else min(
        self.model_config.max_positions, -(-length // BUCKET) * BUCKET)
    outputs = []
    for start in range(0, n, BATCH):
      rows = min(BATCH, n - start)
      size = _bucket_rows(rows)
      pad = ((0, size - rows), (0, width - length))
      t = np.pad(ids[start:start + rows], pad, constant_values=self.tokenizer.pad_id)
      p = None if pos is None else np.pad(pos[start:start + rows], pad)
      l = None if langs_arr is None else np.pad(langs_arr[start:start + rows], pad)
      out = np.asarray(fn(self.encoder_params, t, p, l))
      index = [slice(None)] * out.ndim
      index[batch_axis], index[batch_axis + 1] = slice(0, rows), slice(0, length)
      outputs.append(out[tuple(index)])
    return np.concatenate(outputs, axis=batch_axis)

  def hidden_states(self, ids, langs=None, positions=None, all_layers: bool = False) -> np.ndarray:
    """Last-layer hidden states, float32 [B, L, D]; with `all_layers`, [n_layers + 1, B, L, D]: the embedding
    layer's output (after its LayerNorm), then each Transformer layer's. Zero on padding."""
    ids, langs_arr, pos = self._inputs(ids, langs, positions)
    if all_layers:
      return self._bucketed(_all_layers_fn(self.model), ids, langs_arr, pos, batch_axis=1)
    return self._bucketed(_encode_fn(self.model), ids, langs_arr, pos)

  def logits(self, ids, langs=None, positions=None) -> np.ndarray:
    """MLM/CLM output logits, float32 [B, L, V]."""
    ids, langs_arr, pos = self._inputs(ids, langs, positions)
    return self._bucketed(_logits_fn(self.model), ids, langs_arr, pos)

  def embed(self, texts: Sequence[str], lang: str, layer: int = -1, pooling: str = "first") -> np.ndarray:
    """Sentence embeddings float32 [B, D] from hidden layer `layer` (-1: the last; 0: the embeddings):
    `pooling='first'` takes the first `</s>` (what XLM's classifiers use), `'mean'` averages the real tokens."""
    if pooling not in ("first", "mean"):
      raise UserError(f"pooling={pooling!r}: use 'first' or 'mean'.")
    ids = self.encode(texts, lang)
    states = self.hidden_states(ids, langs=lang, all_layers=True)
    if not -len(states) <= layer < len(states):
      raise UserError(f"layer={layer}: this model has layers 0..{len(states) - 1} (0 = embeddings).")
    h = states[layer]
    if pooling == "first":
      return h[:, 0]
    real = (ids != self.tokenizer.pad_id)[..., None].astype(np.float32)
    return (h * real).sum(1) / np.maximum(real.sum(1), 1.0)

  def translate(self, texts: Sequence[str], src: str, tgt: str, beam: int = 4, length_penalty: float = 1.0,
                early_stopping: bool = False, batch_size: int = 64) -> list[str]:
    """Translate raw sentences from `src` into `tgt` (NMT bundles). Output i translates input i; empty stays
    empty. Uses the same decoder as validation BLEU and back-translation (`xlm_jax.decode`)."""
    if self.architecture != "encoder_decoder" or self.decoder_config is None:
      what = "a classifier" if self.architecture == "classifier" else "a pretrained encoder"
      raise UserError(f"bundle {self.path!r} is {what}, not a translation model, and cannot translate; train one "
                      "with config.task='nmt' (configs/nmt.py) or convert an XLM MT checkpoint.")
    from xlm_jax.translate import translate_texts
    if isinstance(texts, str):
      texts = [texts]
    return translate_texts(self.params, self.model_config, self.decoder_config, self.tokenizer, list(texts), src,
                           tgt, self.languages, beam_size=beam, length_penalty=length_penalty,
                           early_stopping=early_stopping, batch_size=batch_size)

  def fill_mask(self, text: str, lang: str, top_k: int = 5, context: str | None = None,
                context_lang: str | None = None) -> list[list[tuple[str, float]]]:
    """For each `<mask>` in `text`, the `top_k` most probable tokens and their probabilities.

    With `context` (e.g. the translation of `text` in `context_lang`), the model reads a TLM row
    `[</s> context </s>][</s> text </s>]` with positions restarting at `text` and one language id per half, as
    TLM trained it; compare with the same call without `context` to see what the translation contributes."""
    if context is None:
      ids = self.encode([text], lang)
      langs = lang
      positions = None
    else:
      if context_lang is None:
        raise UserError("fill_mask(context=...) needs context_lang, the language of the context sentence.")
      from xlm_jax.data.packing import tlm_example
      tokens, positions, langs = tlm_example(np.asarray(self.tokenizer.encode(context, context_lang), np.int32),
                                             np.asarray(self.tokenizer.encode(text, lang), np.int32),
                                             self.lang_id(context_lang), self.lang_id(lang), self.tokenizer.eos_id)
      first = len(tokens) - len(self.tokenizer.encode(text, lang)) - 2
      ids, positions, langs = tokens[None], positions[None], langs[None]
      if not self.model_config.has_lang_emb:
        langs = None
    where = np.flatnonzero(ids[0] == self.tokenizer.mask_id)
    if context is not None:
      where = where[where >= first]
    if where.size == 0:
      raise UserError("the text has no <mask>.")
    probs = jax.nn.softmax(self.logits(ids, langs=langs, positions=positions)[0, where], axis=-1)
    out = []
    for row in np.asarray(probs):
      best = np.argsort(-row)[:top_k]
      out.append([(self.tokenizer.id_to_piece(int(i)), float(row[i])) for i in best])
    return out


@functools.lru_cache(maxsize=8)
def _encode_fn(model: Transformer):
  return jax.jit(lambda p, ids, pos, langs: model.apply({"params": p}, ids, pos, langs, method="encode"))


@functools.lru_cache(maxsize=8)
def _all_layers_fn(model: Transformer):
  """[n_layers + 1, B, L, D] through Flax's captured intermediates: the model code stays as it is."""
  from xlm_jax.model.transformer import TransformerBlock

  def wanted(module, method: str) -> bool:
    return method == "__call__" and (isinstance(module, TransformerBlock) or module.name == "layer_norm_emb")

  def run(p, ids, pos, langs):
    _, state = model.apply({"params": p}, ids, pos, langs, method="encode", capture_intermediates=wanted)
    inter = state["intermediates"]
    keep = (ids != model.cfg.pad_id)[..., None].astype(jnp.float32)
    layers = [inter["layer_norm_emb"]["__call__"][0] * keep]
    layers += [inter[f"layers_{i}"]["__call__"][0] for i in range(model.cfg.n_layers)]
    return jnp.stack(layers).astype(jnp.float32)

  return jax.jit(run)


@functools.lru_cache(maxsize=8)
def _classify_fn(model):
  """jit(params, ids, langs) -> class probabilities of one example per row (its head reads token 0)."""
  def run(p, ids, langs):
    index = jnp.zeros((ids.shape[0], 1), jnp.int32)
    logits = model.apply({"params": p}, ids, None, langs, None, index)[:, 0]
    return jax.nn.softmax(logits, -1)
  return jax.jit(run)


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
  elif bundle.architecture == "classifier":
    from xlm_jax.model import init_classifier
    expected = nn.unbox(jax.eval_shape(lambda: init_classifier(bundle.model_config, len(bundle.labels),
                                                               jax.random.key(0))))
    ckpt.check_same_shapes(expected, params, f"bundle {path!r}")
  elif bundle.decoder_config is not None:
    expected = {"encoder": shapes(bundle.model_config), "decoder": shapes(bundle.decoder_config)}
    ckpt.check_same_shapes(expected, params, f"bundle {path!r}")
  return bundle
