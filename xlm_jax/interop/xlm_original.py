"""Original facebookresearch/XLM checkpoints (`.pth`) -> xlm_jax models.

A checkpoint written by XLM's `Trainer.save_checkpoint` is a torch pickle of a dict:
  model                       encoder state dict (pretraining, `--encoder_only true`), or
  encoder, decoder            the two state dicts of an NMT model (the decoder adds `encoder_attn.i.*` and
                              `layer_norm15.i.*` per layer, and has its own embeddings and output layer)
  params                      the training arguments as a dict (emb_dim, n_layers, n_heads, n_langs, id2lang,
                              lang2id, use_lang_emb, sinusoidal_embeddings, gelu_activation, dropout, ...)
  dico_id2word / dico_word2id / dico_counts     the vocabulary, after --max_vocab; fastBPE '@@' pieces
plus bookkeeping (epoch, optimizers, best metrics) that is ignored. Multi-GPU runs prefix keys with `module.`.

It is read with `torch.load(weights_only=True)` (see `tensors.py`). Things to know:
- `N_MAX_POSITIONS = 512` is a constant in XLM, so the position count comes from the tensor.
- `params` has no `causal` flag: a model trained only with CLM steps (clm_steps set, mlm_steps empty) is
  imported with `causal=True`, anything else bidirectional (the mode can still be chosen per call).
- The vocabulary is the checkpoint's own `dico_id2word` (XLM issue #180: published vocab files can differ from
  it); it is rewritten the way transformers' converter does ('@@' stripped, '</w>' added). The checkpoint has
  no BPE merges: pass the model's fastBPE codes with `--codes` to be able to encode text.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from xlm_jax.errors import UserError
from xlm_jax.interop import hf, tensors, weights
from xlm_jax.interop.bundle_io import Converted
from xlm_jax.model.config import TransformerConfig


def _params_value(params: Mapping, key: str, default: Any = None) -> Any:
  value = params.get(key, default)
  return default if value is None else value


def _state(ckpt: Mapping, key: str, path: str) -> dict[str, np.ndarray]:
  raw = ckpt[key]
  if not isinstance(raw, Mapping):
    raise UserError(f"{path}: '{key}' is a {type(raw).__name__}, not a state dict.")
  state = {str(k): v for k, v in raw.items()}
  if state and all(k.startswith("module.") for k in state):
    state = weights.strip_prefix(state, "module.")
  return {k: tensors.to_numpy(v, f"{path}: {key}.{k}") for k, v in state.items()}


def model_config(params: Mapping, state: Mapping[str, np.ndarray], path: str, *, is_decoder: bool = False,
                 causal: bool = False) -> TransformerConfig:
  """Our config from XLM `params` and the tensors (n_layers and positions are read from the tensors)."""
  def need(key):
    value = params.get(key)
    if value is None:
      raise UserError(f"{path}: params has no {key!r}; this is not an XLM training checkpoint.")
    return value

  n_layers = weights.count_layers(state)
  if int(_params_value(params, "n_layers", n_layers)) != n_layers:
    raise UserError(f"{path}: params says n_layers={params.get('n_layers')} but the state dict has {n_layers} "
                    "layers.")
  pos = state.get("position_embeddings.weight")
  max_positions = int(pos.shape[0]) if pos is not None and pos.ndim == 2 else 512
  emb = state.get("embeddings.weight")
  if emb is None or emb.ndim != 2:
    raise UserError(f"{path}: the state dict has no 2-D embeddings.weight.")
  return TransformerConfig(
      vocab_size=int(emb.shape[0]), emb_dim=int(need("emb_dim")), n_layers=n_layers, n_heads=int(need("n_heads")),
      n_langs=int(_params_value(params, "n_langs", 1)), use_lang_emb=bool(_params_value(params, "use_lang_emb", True)),
      max_positions=max_positions, sinusoidal_embeddings=bool(_params_value(params, "sinusoidal_embeddings", False)),
      causal=causal, activation="gelu" if _params_value(params, "gelu_activation", False) else "relu",
      dropout=float(_params_value(params, "dropout", 0.0)),
      attention_dropout=float(_params_value(params, "attention_dropout", 0.0)),
      pad_id=int(_params_value(params, "pad_index", 2)), is_decoder=is_decoder)


def refuse_unsupported_params(params: Mapping, path: str) -> None:
  if params.get("asm"):
    raise UserError(f"{path} was trained with --asm true (adaptive softmax); xlm_jax cannot represent it.")
  if params.get("use_memory"):
    raise UserError(f"{path} was trained with --use_memory true (product-key memory); xlm_jax cannot represent it.")


def _id2word(ckpt: Mapping, path: str) -> dict[int, str]:
  id2word = ckpt.get("dico_id2word")
  if not isinstance(id2word, Mapping):
    word2id = ckpt.get("dico_word2id")
    if not isinstance(word2id, Mapping):
      raise UserError(f"{path} has no dico_id2word / dico_word2id: the vocabulary is missing, so the ids cannot be "
                      "interpreted; use the checkpoint as saved by XLM's trainer.")
    id2word = {int(i): str(w) for w, i in word2id.items()}
  return {int(i): str(w) for i, w in id2word.items()}


def read_codes(path: str) -> list[tuple[str, str]]:
  """fastBPE codes ("a b count" per line) as merge pairs in rank order."""
  from xlm_jax.interop.xlm_bpe import parse_merges
  if not os.path.isfile(path):
    raise UserError(f"the BPE codes file {path} does not exist.")
  try:
    with open(path, encoding="utf-8") as f:
      codes = parse_merges(f.read(), transformers_quirks=False)
  except UnicodeDecodeError:
    raise UserError(f"{path} is not UTF-8 text; give the fastBPE codes file the model was trained with.") from None
  if not codes:
    raise UserError(f"{path} holds no BPE merges ('a b count' lines).")
  return codes


def read_xlm_checkpoint(path: str, *, codes_file: str | None = None, lowercase: bool | None = None,
                        languages: Sequence[str] | None = None) -> Converted:
  """Read an original XLM `.pth` (pretrained encoder or NMT encoder/decoder) into our layout."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(path):
    raise UserError(f"{path} does not exist.")
  ckpt = tensors.torch_load_weights_only(path)
  if not isinstance(ckpt, Mapping):
    raise UserError(f"{path} holds a {type(ckpt).__name__}, not an XLM checkpoint dict.")
  params = ckpt.get("params")
  if not isinstance(params, Mapping):
    raise UserError(f"{path} has no 'params' dict; it is not a checkpoint written by XLM's trainer.")
  refuse_unsupported_params(params, path)
  if "model" in ckpt:
    parts = {"encoder": _state(ckpt, "model", path)}
  elif "encoder" in ckpt and "decoder" in ckpt:
    parts = {"encoder": _state(ckpt, "encoder", path), "decoder": _state(ckpt, "decoder", path)}
  elif "encoder" in ckpt:
    parts = {"encoder": _state(ckpt, "encoder", path)}
  else:
    raise UserError(f"{path} has neither 'model' nor 'encoder'/'decoder' weights (keys: {sorted(map(str, ckpt))[:8]}).")
  notes: list[str] = []
  for state in parts.values():
    weights.refuse_unsupported(state, path)

  clm = bool(params.get("clm_steps")) and not params.get("mlm_steps")
  enc_cfg = model_config(params, parts["encoder"], path, causal=clm)
  if clm:
    notes.append("trained with CLM steps only: imported as a causal model.")
  id2word = _id2word(ckpt, path)
  n_words = params.get("n_words")
  rows = enc_cfg.vocab_size
  if len(id2word) != rows:
    raise UserError(f"{path}: the checkpoint's dictionary (dico_id2word) has {len(id2word)} words but "
                    f"embeddings.weight has {rows} rows; {weights.max_vocab_hint(rows, from_checkpoint=True)}.")
  if n_words is not None and int(n_words) != rows:
    raise UserError(f"{path}: params says n_words={n_words} but embeddings.weight has {rows} rows; "
                    f"{weights.max_vocab_hint(rows, from_checkpoint=True)}.")
  id2lang = params.get("id2lang")
  lang2id = params.get("lang2id")
  langs = hf.resolve_languages(hf.languages_from_maps(id2lang, lang2id, enc_cfg.n_langs, path), languages,
                               enc_cfg.n_langs, path, notes)

  from xlm_jax.interop.xlm_bpe import XLMBPETokenizer
  codes = read_codes(codes_file) if codes_file else None
  tok = XLMBPETokenizer.from_xlm_dico(id2word, codes, languages=langs)
  if lowercase is None:
    lowercase = not hf._guess_cased(tok.vocab)
    notes.append(f"XLM checkpoints do not record the text normalisation; the vocabulary "
                 f"{'has no' if lowercase else 'has'} uppercase pieces, so lowercasing/accent removal is "
                 f"{'ON' if lowercase else 'OFF'} (override with --lowercase / --cased).")
  tok.do_lowercase_and_remove_accent = lowercase
  if codes is None:
    notes.append("no --codes given: the bundle holds the vocabulary but no BPE merges, so it can run the model "
                 "on token ids and decode them, but cannot encode text.")
  if tok.pad_id != enc_cfg.pad_id or tok.eos_id != int(params.get("eos_index", 1)):
    raise UserError(f"{path}: params says pad={enc_cfg.pad_id} eos={params.get('eos_index', 1)} but the dictionary "
                    f"has <pad> at {tok.pad_id} and </s> at {tok.eos_id}.")

  share = params.get("share_inout_emb", True)
  out_params, configs = {}, {}
  for name, state in parts.items():
    cfg = enc_cfg if name == "encoder" else model_config(params, state, path, is_decoder=True, causal=True)
    if cfg.vocab_size != enc_cfg.vocab_size:
      raise UserError(f"{path}: the decoder has {cfg.vocab_size} embedding rows but the encoder {enc_cfg.vocab_size}; "
                      "XLM's encoder and decoder share one dictionary, so the file is damaged.")
    tied = state.pop("pred_layer.proj.weight", None)
    if tied is not None and not np.array_equal(tied, state.get("embeddings.weight")):
      why = " (--share_inout_emb false)" if not share else ""
      raise UserError(f"{path}: the {name}'s pred_layer.proj.weight differs from its embeddings{why}; xlm_jax "
                      "ties them and cannot represent this model.")
    if "pred_layer.proj.bias" not in state:
      raise UserError(f"{path}: the {name} has no output layer (pred_layer.proj.bias); xlm_jax needs it.")
    if cfg.sinusoidal_embeddings and not weights.check_sinusoidal(state, cfg, path):
      cfg = cfg.replace(sinusoidal_embeddings=False)
      notes.append(f"the {name}'s position table is not the fixed sinusoid; imported as learned positions.")
    out_params[name] = weights.state_to_params(state, cfg, f"{path} ({name})")
    configs[name] = cfg
  enc_cfg = configs["encoder"]
  source = {"format": "facebookresearch/XLM", "path": path, "parts": sorted(parts),
            "codes": os.path.abspath(codes_file) if codes_file else None}
  hf_like = hf.hf_config_for(enc_cfg, langs, tok)
  reference = {"kind": "state", "state": parts["encoder"], "hf_config": hf_like}
  if "decoder" in parts:
    return Converted("encoder_decoder", enc_cfg, out_params, langs, tok, {"xlm_params": params}, source,
                     decoder_config=configs["decoder"], notes=notes, reference=reference)
  return Converted("encoder", enc_cfg, out_params["encoder"], langs, tok, {"xlm_params": params}, source,
                   notes=notes, reference=reference)

