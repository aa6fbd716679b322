"""transformers `XLMWithLMHeadModel` directories <-> xlm_jax models.

Reading (`read_hf_dir`) needs only numpy for `model.safetensors`; `pytorch_model.bin` needs torch (read with
`weights_only=True`). Writing (`write_hf_dir`) needs neither. What is carried over:

- config.json: emb_dim, n_layers, n_heads, vocab_size (n_words), n_langs, use_lang_emb, lang2id/id2lang,
  sinusoidal_embeddings, causal, gelu_activation (False = ReLU), dropout, attention_dropout, layer_norm_eps,
  max_position_embeddings and pad/eos ids, with transformers' defaults for absent fields (so a hub config of the
  4.x era, which is XLM's `params` dumped verbatim, reads the same as a 5.x one). `asm` (adaptive softmax),
  `use_memory` (product-key memory), `is_encoder: false` and an untied output layer are refused.
- weights: `transformer.` prefixes dropped (bare `XLMModel` checkpoints have none), the `position_ids` buffer
  skipped. `save_pretrained` omits `pred_layer.proj.weight` because it is tied to `transformer.embeddings.weight`;
  only `pred_layer.proj.bias` is stored, and that is what we write back.
- tokenizer: vocab.json + merges.txt (+ tokenizer_config.json for `do_lowercase_and_remove_accent` and the special
  tokens) become an `xlm_bpe` tokenizer. A directory written by `to-hf` from one of our sentencepiece bundles has
  `spm.model` instead, which is read back as that sentencepiece tokenizer.

Traps: transformers frames sentences `<s> X </s>`, XLM `</s> X </s>` (our bundles encode the XLM way); transformers
ignores `langs` when n_langs == 1, and so do we; the sinusoidal table is a stored tensor there and computed here.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from xlm_jax.errors import UserError
from xlm_jax.interop import tensors, weights
from xlm_jax.interop.bundle_io import Converted
from xlm_jax.model.config import TransformerConfig

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
SPM_FILE = "spm.model"
ALIASES = {"vocab_size": ("vocab_size", "n_words"), "emb_dim": ("emb_dim", "hidden_size"),
           "n_layers": ("n_layers", "num_hidden_layers"), "n_heads": ("n_heads", "num_attention_heads"),
           "pad_token_id": ("pad_token_id", "pad_index"), "eos_token_id": ("eos_token_id", "eos_index"),
           "bos_token_id": ("bos_token_id", "bos_index")}
# transformers 5.24 XLMConfig defaults for the fields that change behaviour or shapes.
HF_DEFAULTS = {"vocab_size": 30145, "emb_dim": 2048, "n_layers": 12, "n_heads": 16, "dropout": 0.1,
               "attention_dropout": 0.1, "gelu_activation": True, "sinusoidal_embeddings": False, "causal": False,
               "asm": False, "n_langs": 1, "use_lang_emb": True, "max_position_embeddings": 512,
               "layer_norm_eps": 1e-12, "pad_token_id": 2, "bos_token_id": 0, "eos_token_id": 1, "unk_index": 3,
               "mask_index": 5, "is_encoder": True, "tie_word_embeddings": True}
OTHER_MODEL_TYPES = {
    "xlm-roberta": "XLM-R (xlm-roberta) is a different architecture (RoBERTa layout, sentencepiece vocabulary, "
                   "position ids offset by the pad id); xlm_jax converts XLM models only",
    "xlm-roberta-xl": "XLM-R XL is a different architecture; xlm_jax converts XLM models only",
    "bert": "BERT is a different architecture (token types, pooler, WordPiece vocabulary); xlm_jax converts XLM "
            "models only",
    "xlm-prophetnet": "XLM-ProphetNet is a different architecture; xlm_jax converts XLM models only",
}


def hf_get(cfg: Mapping[str, Any], field: str) -> Any:
  """A config value by its canonical name or its aliases (`n_words`, `pad_index`, ...), else transformers' default."""
  for key in ALIASES.get(field, (field,)):
    if key in cfg and cfg[key] is not None:
      return cfg[key]
  return HF_DEFAULTS.get(field)


def _read_json(path: str, what: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserError(f"cannot read {what} {path!r}: {e}.") from None
  if not isinstance(value, dict):
    raise UserError(f"{path} is not a JSON object.")
  return value


def check_is_xlm(cfg: Mapping[str, Any], path: str) -> None:
  """Refuse configs of other model families, with what they are and why they do not convert."""
  model_type = cfg.get("model_type")
  archs = [str(a) for a in cfg.get("architectures") or []]
  if model_type is not None and model_type != "xlm":
    why = OTHER_MODEL_TYPES.get(str(model_type), "xlm_jax converts XLM models (model_type 'xlm') only")
    raise UserError(f"{path} has model_type {model_type!r}: {why}.")
  if model_type is None:
    foreign = [a for a in archs if not a.startswith("XLM") or a.startswith(("XLMRoberta", "XLMProphetNet"))]
    if foreign or ("emb_dim" not in cfg and not archs):
      raise UserError(f"{path} does not describe an XLM model (architectures {archs or 'absent'}, no model_type "
                      "'xlm'); give the directory of an XLMWithLMHeadModel.")
  if cfg.get("asm", False):
    raise UserError(f"{path} sets asm: true (adaptive softmax output); xlm_jax cannot represent it.")
  if cfg.get("use_memory", False):
    raise UserError(f"{path} sets use_memory: true (product-key memory layers); xlm_jax cannot represent them.")
  if not hf_get(cfg, "is_encoder"):
    raise UserError(f"{path} sets is_encoder: false; transformers has no XLM decoder and neither does this reader.")


def _int(cfg: Mapping, field: str, path: str) -> int:
  value = hf_get(cfg, field)
  if isinstance(value, bool) or not isinstance(value, int):
    raise UserError(f"{path}: {field} is {value!r}; expected an integer.")
  return value


def config_from_hf(cfg: Mapping[str, Any], path: str) -> TransformerConfig:
  """Our TransformerConfig from a transformers XLM config dict (aliases and defaults as XLMConfig)."""
  return TransformerConfig(
      vocab_size=_int(cfg, "vocab_size", path), emb_dim=_int(cfg, "emb_dim", path),
      n_layers=_int(cfg, "n_layers", path), n_heads=_int(cfg, "n_heads", path), n_langs=_int(cfg, "n_langs", path),
      use_lang_emb=bool(hf_get(cfg, "use_lang_emb")), max_positions=_int(cfg, "max_position_embeddings", path),
      sinusoidal_embeddings=bool(hf_get(cfg, "sinusoidal_embeddings")), causal=bool(hf_get(cfg, "causal")),
      activation="gelu" if hf_get(cfg, "gelu_activation") else "relu", dropout=float(hf_get(cfg, "dropout")),
      attention_dropout=float(hf_get(cfg, "attention_dropout")), layer_norm_eps=float(hf_get(cfg, "layer_norm_eps")),
      pad_id=_int(cfg, "pad_token_id", path))


def languages_from_maps(id2lang: Any, lang2id: Any, n_langs: int, where: str) -> list[str] | None:
  """[code by id] from id2lang ({"0": "en"}) or lang2id ({"en": 0}); None when neither is given."""
  by_id: dict[int, str] = {}
  if isinstance(id2lang, Mapping) and id2lang:
    by_id = {int(k): str(v) for k, v in id2lang.items()}
  elif isinstance(lang2id, Mapping) and lang2id:
    by_id = {int(v): str(k) for k, v in lang2id.items()}
  if not by_id:
    return None
  if sorted(by_id) != list(range(n_langs)):
    raise UserError(f"{where}: the language map {dict(sorted(by_id.items()))} does not give ids 0..{n_langs - 1} "
                    f"for n_langs={n_langs}.")
  if isinstance(id2lang, Mapping) and isinstance(lang2id, Mapping) and lang2id:
    other = {int(v): str(k) for k, v in lang2id.items()}
    if other != by_id:
      raise UserError(f"{where}: id2lang {dict(sorted(by_id.items()))} and lang2id {lang2id} disagree.")
  return [by_id[i] for i in range(n_langs)]


def resolve_languages(found: list[str] | None, given: Sequence[str] | None, n_langs: int, where: str,
                      notes: list[str]) -> list[str]:
  if given:
    given = list(given)
    if len(given) != n_langs:
      raise UserError(f"--languages lists {len(given)} language(s) {given} but the model has n_langs={n_langs}.")
    if found is not None and found != given:
      raise UserError(f"--languages {given} disagrees with the language map in {where} ({found}); drop the flag.")
    return given
  if found is not None:
    return found
  if n_langs == 1:
    notes.append(f"{where} names no language; calling the model's one language 'en' (use --languages to change).")
    return ["en"]
  raise UserError(f"{where} has n_langs={n_langs} but no lang2id/id2lang; pass --languages with the codes in "
                  "language-id order (XLM sorts them alphabetically), e.g. --languages en,fr.")


def read_weights(hf_dir: str) -> tuple[dict[str, np.ndarray], str]:
  """The state dict of an HF directory (safetensors preferred, sharded indexes followed) and the file it came from."""
  for name in WEIGHT_FILES:
    path = os.path.join(hf_dir, name)
    if not os.path.isfile(path):
      continue
    if name.endswith(".index.json"):
      index = _read_json(path, "the weight index")
      shards = sorted(set((index.get("weight_map") or {}).values()))
      if not shards:
        raise UserError(f"{path} lists no weight files.")
      state: dict[str, np.ndarray] = {}
      for shard in shards:
        shard_path = os.path.join(hf_dir, shard)
        if not os.path.isfile(shard_path):
          raise UserError(f"{path} refers to {shard}, which is not in {hf_dir}; download the missing shard.")
        state.update(_read_one(shard_path))
      return state, name
    return _read_one(path), name
  raise UserError(f"{hf_dir} has no weights: expected one of {', '.join(WEIGHT_FILES)}.")


def _read_one(path: str) -> dict[str, np.ndarray]:
  if path.endswith(".safetensors"):
    return tensors.read_safetensors(path)
  loaded = tensors.torch_load_weights_only(path)
  if not isinstance(loaded, Mapping):
    raise UserError(f"{path} holds a {type(loaded).__name__}, not a state dict of tensors.")
  return {str(k): tensors.to_numpy(v, f"{path}: {k}") for k, v in loaded.items()}


def _guess_cased(vocab: Sequence[str]) -> bool:
  """A vocabulary learnt on lowercased text has no uppercase letters outside its special pieces."""
  return any(any(ch.isupper() for ch in piece) for piece in vocab[14:])


def read_tokenizer(hf_dir: str, languages: list[str], notes: list[str], *, vocab_file: str | None = None,
                   merges_file: str | None = None, lowercase: bool | None = None):
  """The bundle tokenizer of an HF directory: xlm_bpe from vocab.json + merges.txt, or our sentencepiece model."""
  from xlm_jax.interop.xlm_bpe import XLMBPETokenizer
  vocab_file = vocab_file or os.path.join(hf_dir, "vocab.json")
  merges_file = merges_file or os.path.join(hf_dir, "merges.txt")
  spm_file = os.path.join(hf_dir, SPM_FILE)
  if not os.path.isfile(vocab_file):
    if os.path.isfile(spm_file) and not os.path.isfile(merges_file):
      from xlm_jax.tokenizer import SentencePieceTokenizer
      with open(spm_file, "rb") as f:
        return SentencePieceTokenizer(f.read(), languages)
    raise UserError(f"the tokenizer file {vocab_file} is missing: copy the vocab.json published with the model "
                    "into the directory (or pass --vocab FILE).")
  if not os.path.isfile(merges_file):
    raise UserError(f"the tokenizer file {merges_file} is missing: copy the merges.txt (BPE codes) published with "
                    "the model into the directory (or pass --merges FILE).")
  tok_cfg_path = os.path.join(hf_dir, "tokenizer_config.json")
  tok_cfg = _read_json(tok_cfg_path, "the tokenizer config") if os.path.isfile(tok_cfg_path) else {}
  cls_name = tok_cfg.get("tokenizer_class")
  if cls_name and cls_name not in ("XLMTokenizer",):
    raise UserError(f"{tok_cfg_path} names tokenizer_class {cls_name!r}; an XLM model uses XLMTokenizer.")
  if lowercase is None and "do_lowercase_and_remove_accent" in tok_cfg:
    lowercase = bool(tok_cfg["do_lowercase_and_remove_accent"])
  tok = XLMBPETokenizer.from_hf_files(vocab_file, merges_file, do_lowercase_and_remove_accent=True,
                                      languages=languages, tokenizer_config=tok_cfg)
  if lowercase is None:
    lowercase = not _guess_cased(tok.vocab)
    notes.append(f"no do_lowercase_and_remove_accent in tokenizer_config.json; the vocabulary "
                 f"{'has no' if lowercase else 'has'} uppercase pieces, so lowercasing/accent removal is "
                 f"{'ON' if lowercase else 'OFF'} (override with --lowercase / --cased).")
  tok.do_lowercase_and_remove_accent = lowercase
  return tok


def read_hf_dir(hf_dir: str, *, vocab_file: str | None = None, merges_file: str | None = None,
                lowercase: bool | None = None, languages: Sequence[str] | None = None) -> Converted:
  """Read an `XLMWithLMHeadModel` directory into our layout; every shape, key and vocabulary size is checked."""
  hf_dir = os.path.abspath(os.path.expanduser(hf_dir))
  if not os.path.isdir(hf_dir):
    raise UserError(f"{hf_dir} is not a directory; give the directory holding config.json and the weights.")
  cfg_path = os.path.join(hf_dir, "config.json")
  if not os.path.isfile(cfg_path):
    raise UserError(f"{hf_dir} has no config.json; it is not a transformers model directory.")
  hf_cfg = _read_json(cfg_path, "the model config")
  check_is_xlm(hf_cfg, cfg_path)
  cfg = config_from_hf(hf_cfg, cfg_path)
  notes: list[str] = []
  langs = resolve_languages(languages_from_maps(hf_cfg.get("id2lang"), hf_cfg.get("lang2id"), cfg.n_langs, cfg_path),
                            languages, cfg.n_langs, cfg_path, notes)
  state, weight_name = read_weights(hf_dir)
  state = weights.strip_prefix(state, "transformer.")
  weights.refuse_unsupported(state, os.path.join(hf_dir, weight_name))
  if "pred_layer.proj.bias" not in state and "embeddings.weight" in state:
    raise UserError(f"{os.path.join(hf_dir, weight_name)} has no pred_layer.proj.bias: it is not an "
                    f"XLMWithLMHeadModel (architectures {hf_cfg.get('architectures')}); convert the checkpoint "
                    "with the language-model head.")
  tok = read_tokenizer(hf_dir, langs, notes, vocab_file=vocab_file, merges_file=merges_file, lowercase=lowercase)
  emb = state.get("embeddings.weight")
  if emb is not None and emb.ndim == 2 and tok.vocab_size != emb.shape[0]:
    raise UserError(f"the tokenizer has {tok.vocab_size} pieces ({vocab_file or 'vocab.json'}) but the model's "
                    f"embedding matrix (transformer.embeddings.weight) has {emb.shape[0]} rows; "
                    f"{weights.max_vocab_hint(emb.shape[0])}.")
  notes += _check_special_ids(tok, cfg, hf_cfg, cfg_path)
  tied = state.pop("pred_layer.proj.weight", None)
  if tied is not None and emb is not None and not np.array_equal(tied, emb):
    if hf_get(hf_cfg, "tie_word_embeddings"):
      notes.append("pred_layer.proj.weight differs from the embeddings in the file; transformers ties them "
                   "(tie_word_embeddings) and uses the embeddings, and so does xlm_jax.")
    else:
      raise UserError(f"{cfg_path} sets tie_word_embeddings: false and the output layer differs from the "
                      "embeddings; xlm_jax ties them and cannot represent this model.")
  if cfg.sinusoidal_embeddings and not weights.check_sinusoidal(state, cfg, weight_name):
    cfg = cfg.replace(sinusoidal_embeddings=False)
    notes.append("the position table is not the fixed sinusoid (it was trained or altered); imported as learned "
                 "positions.")
  params = weights.state_to_params(state, cfg, os.path.join(hf_dir, weight_name),
                                   vocab_name="transformer.embeddings.weight")
  source = {"format": "transformers", "path": hf_dir, "weights": weight_name,
            "transformers_version": hf_cfg.get("transformers_version"), "tokenizer_source": tok.kind}
  return Converted("encoder", cfg, params, langs, tok, {"hf_config": hf_cfg}, source, notes=notes,
                   reference={"kind": "hf_dir", "path": hf_dir})


def _check_special_ids(tok, cfg: TransformerConfig, hf_cfg: Mapping, where: str) -> list[str]:
  """pad and eos must agree between config and vocabulary (they change the model's behaviour); mask and unk
  mismatches are only noted (the tokenizer's pieces decide those ids, as in transformers)."""
  if tok.pad_id != cfg.pad_id:
    raise UserError(f"{where} says pad id {cfg.pad_id} but the vocabulary has <pad> at id {tok.pad_id}; the "
                    "vocabulary does not belong to this model.")
  eos = hf_get(hf_cfg, "eos_token_id")
  if isinstance(eos, int) and not isinstance(eos, bool) and eos != tok.eos_id:
    raise UserError(f"{where} says eos id {eos} but the vocabulary has </s> at id {tok.eos_id}; the vocabulary "
                    "does not belong to this model.")
  notes = []
  for field, role, value in (("mask_index", "mask", tok.mask_id), ("unk_index", "unk", tok.unk_id)):
    stated = hf_cfg.get(field)
    if isinstance(stated, int) and stated != value:
      notes.append(f"config.json says {field}={stated} but the tokenizer's {role} piece {tok.roles[role]!r} has id "
                   f"{value}; the tokenizer's id is used.")
  return notes


# --------------------------------------------------------------------------------------------------------- export
def hf_config_for(cfg: TransformerConfig, languages: Sequence[str], tok, base: Mapping | None = None) -> dict:
  """A transformers 5.x config.json for an XLMWithLMHeadModel equal in behaviour to our model."""
  out = {k: v for k, v in (base or {}).items()
         if k not in {alias for names in ALIASES.values() for alias in names}}
  out.update({
      "architectures": ["XLMWithLMHeadModel"], "model_type": "xlm", "vocab_size": cfg.vocab_size,
      "emb_dim": cfg.emb_dim, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "n_langs": cfg.n_langs,
      "use_lang_emb": cfg.use_lang_emb, "max_position_embeddings": cfg.max_positions,
      "sinusoidal_embeddings": cfg.sinusoidal_embeddings, "causal": cfg.causal,
      "gelu_activation": cfg.activation == "gelu", "dropout": cfg.dropout,
      "attention_dropout": cfg.attention_dropout, "layer_norm_eps": cfg.layer_norm_eps, "pad_token_id": cfg.pad_id,
      "bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "unk_index": tok.unk_id, "mask_index": tok.mask_id,
      "asm": False, "is_encoder": True, "tie_word_embeddings": True, "dtype": "float32",
      "lang2id": {lang: i for i, lang in enumerate(languages)},
      "id2lang": {str(i): lang for i, lang in enumerate(languages)},
  })
  out.setdefault("mask_token_id", tok.mask_id)
  out.setdefault("lang_id", 0)
  return out


def write_hf_dir(out_dir: str, cfg: TransformerConfig, params: Mapping, languages: Sequence[str], tok,
                 base_config: Mapping | None = None, provenance: Mapping | None = None) -> list[str]:
  """Write config.json, model.safetensors and the tokenizer files into an existing empty directory."""
  notes: list[str] = []
  state = weights.params_to_state(params, cfg)
  hf_state = {(k if k.startswith("pred_layer.") else "transformer." + k): v for k, v in state.items()}
  tensors.write_safetensors(os.path.join(out_dir, "model.safetensors"), hf_state, {"format": "pt"})
  config = hf_config_for(cfg, languages, tok, base_config)
  config["xlm_jax"] = dict(provenance or {}, tokenizer=tok.kind)
  _write_json(os.path.join(out_dir, "config.json"), config)
  if tok.kind == "xlm_bpe":
    _write_json(os.path.join(out_dir, "vocab.json"), tok.hf_vocab())
    if tok.merges is not None:
      with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write(tok.hf_merges_text())
    else:
      notes.append("the tokenizer has no BPE merges (imported from a .pth without --codes): wrote vocab.json only; "
                   "XLMTokenizer needs a merges.txt too.")
    roles = tok.roles
    _write_json(os.path.join(out_dir, "tokenizer_config.json"), {
        "tokenizer_class": "XLMTokenizer", "do_lowercase_and_remove_accent": tok.do_lowercase_and_remove_accent,
        "lang2id": config["lang2id"], "id2lang": config["id2lang"], "model_max_length": cfg.max_positions,
        "bos_token": roles["bos"], "sep_token": roles["eos"], "cls_token": roles["eos"], "pad_token": roles["pad"],
        "unk_token": roles["unk"], "mask_token": roles["mask"]})
  elif tok.kind == "sentencepiece":
    tok.save(os.path.join(out_dir, SPM_FILE))
    notes.append(f"the model uses our sentencepiece vocabulary, which XLMTokenizer cannot reproduce: wrote it as "
                 f"{SPM_FILE}; in PyTorch tokenise with sentencepiece.SentencePieceProcessor(model_file=...) and "
                 "frame each sentence as </s> ids </s> (id 1).")
  else:
    notes.append(f"tokenizer kind {tok.kind!r} has no transformers equivalent; no tokenizer files written.")
  return notes


def _write_json(path: str, value: Any) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2, sort_keys=True, ensure_ascii=False)
    f.write("\n")
