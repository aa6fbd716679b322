"""XLM state-dict names <-> the xlm_jax parameter tree, for encoders and NMT decoders.

The reference (facebookresearch/XLM) and transformers use the same names; transformers prefixes everything but
`pred_layer.*` with `transformer.` (see `hf.py`). Mapping, with `i` the layer:

  embeddings.weight [V,D]                 -> embeddings/embedding
  position_embeddings.weight [P,D]        -> position_embeddings/embedding   (absent here when sinusoidal)
  lang_embeddings.weight [n_langs,D]      -> lang_embeddings/embedding       (only when n_langs > 1 and use_lang_emb)
  layer_norm_emb.{weight,bias}            -> layer_norm_emb/{scale,bias}
  attentions.i.{q,k,v}_lin.weight [D,D]   -> layers_i/attention/{q,k,v}_lin/kernel [D,H,Dh] = W.T reshaped
  attentions.i.{q,k,v}_lin.bias [D]       -> .../bias [H,Dh]
  attentions.i.out_lin.weight [D,D]       -> layers_i/attention/out_lin/kernel [H,Dh,D] = W.T reshaped
  layer_norm1.i / layer_norm2.i           -> layers_i/layer_norm1 / layer_norm2
  ffns.i.lin1.weight [4D,D], lin2 [D,4D]  -> layers_i/ffn/lin1/kernel [D,4D], lin2/kernel [4D,D] (transposed)
  encoder_attn.i.*, layer_norm15.i.*      -> layers_i/encoder_attn/*, layers_i/layer_norm15 (decoders)
  pred_layer.proj.bias [V]                -> pred_bias
  pred_layer.proj.weight                  -> (tied: must equal embeddings.weight; not stored here)

Traps: torch Linear weights are [out, in] - square q/k/v/out matrices load without error when the transpose is
forgotten and give wrong results; heads are a head-major split of the feature axis (`view(bs, -1, H, Dh)`);
a sinusoidal position table is stored by the reference and transformers but is not a parameter here.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import numpy as np

from xlm_jax.errors import UserError
from xlm_jax.model.config import TransformerConfig

def max_vocab_hint(rows: int, *, from_checkpoint: bool = False) -> str:
  """What to do when a vocabulary and an embedding matrix disagree in size (XLM issues #61, #180, #333)."""
  if from_checkpoint:
    return (f"the dictionary does not belong to these weights (the classic --max_vocab confusion: this model has "
            f"{rows} rows, i.e. it was trained with --max_vocab {rows}); use the checkpoint exactly as XLM's trainer "
            "saved it, whose dico_id2word is already cut to the model's size")
  return ("the vocabulary does not belong to these weights (the classic --max_vocab confusion). Use the vocab.json "
          "published with the model; for an original XLM checkpoint convert the .pth with `from-xlm`, which takes "
          f"the vocabulary stored inside it (dico_id2word); or rebuild the vocabulary with --max_vocab {rows}")


def sinusoidal_table_np(n_positions: int, dim: int) -> np.ndarray:
  """The fixed position table as float32, computed as the reference and transformers compute it (float64 numpy,
  sin on even columns, cos on odd ones), so that exporting it reproduces their tensor bit for bit."""
  denominators = np.array([np.power(10000, 2 * (j // 2) / dim) for j in range(dim)])
  angles = np.arange(n_positions, dtype=np.float64)[:, None] / denominators[None, :]
  out = np.empty((n_positions, dim), np.float32)
  out[:, 0::2] = np.sin(angles[:, 0::2])
  out[:, 1::2] = np.cos(angles[:, 1::2])
  return out


# ------------------------------------------------------------------------------------------------ per-tensor maps
def _identity(x, cfg):
  return x


def _qkv_kernel_in(w, cfg):
  return w.T.reshape(cfg.emb_dim, cfg.n_heads, cfg.head_dim)


def _qkv_kernel_out(k, cfg):
  return k.reshape(cfg.emb_dim, cfg.emb_dim).T


def _qkv_bias_in(b, cfg):
  return b.reshape(cfg.n_heads, cfg.head_dim)


def _qkv_bias_out(b, cfg):
  return b.reshape(cfg.emb_dim)


def _out_kernel_in(w, cfg):
  return w.T.reshape(cfg.n_heads, cfg.head_dim, cfg.emb_dim)


def _out_kernel_out(k, cfg):
  return k.reshape(cfg.emb_dim, cfg.emb_dim).T


def _transpose(w, cfg):
  return w.T


Rule = tuple[str, tuple[str, ...], tuple[int, ...], Callable, Callable]


def _rules(cfg: TransformerConfig) -> list[Rule]:
  """(XLM name, our path, XLM shape, to ours, to XLM) for every tensor of a model with this config."""
  d, v, f = cfg.emb_dim, cfg.vocab_size, cfg.ffn_dim
  out: list[Rule] = [("embeddings.weight", ("embeddings", "embedding"), (v, d), _identity, _identity)]
  if not cfg.sinusoidal_embeddings:
    out.append(("position_embeddings.weight", ("position_embeddings", "embedding"), (cfg.max_positions, d),
                _identity, _identity))
  if cfg.has_lang_emb:
    out.append(("lang_embeddings.weight", ("lang_embeddings", "embedding"), (cfg.n_langs, d), _identity, _identity))
  out += _layer_norm("layer_norm_emb", ("layer_norm_emb",), d)
  for i in range(cfg.n_layers):
    layer = f"layers_{i}"
    attentions = [("attentions", "attention")] + ([("encoder_attn", "encoder_attn")] if cfg.is_decoder else [])
    for xlm_name, ours in attentions:
      for lin in ("q_lin", "k_lin", "v_lin"):
        out.append((f"{xlm_name}.{i}.{lin}.weight", (layer, ours, lin, "kernel"), (d, d), _qkv_kernel_in,
                    _qkv_kernel_out))
        out.append((f"{xlm_name}.{i}.{lin}.bias", (layer, ours, lin, "bias"), (d,), _qkv_bias_in, _qkv_bias_out))
      out.append((f"{xlm_name}.{i}.out_lin.weight", (layer, ours, "out_lin", "kernel"), (d, d), _out_kernel_in,
                  _out_kernel_out))
      out.append((f"{xlm_name}.{i}.out_lin.bias", (layer, ours, "out_lin", "bias"), (d,), _identity, _identity))
    out += _layer_norm(f"layer_norm1.{i}", (layer, "layer_norm1"), d)
    if cfg.is_decoder:
      out += _layer_norm(f"layer_norm15.{i}", (layer, "layer_norm15"), d)
    out.append((f"ffns.{i}.lin1.weight", (layer, "ffn", "lin1", "kernel"), (f, d), _transpose, _transpose))
    out.append((f"ffns.{i}.lin1.bias", (layer, "ffn", "lin1", "bias"), (f,), _identity, _identity))
    out.append((f"ffns.{i}.lin2.weight", (layer, "ffn", "lin2", "kernel"), (d, f), _transpose, _transpose))
    out.append((f"ffns.{i}.lin2.bias", (layer, "ffn", "lin2", "bias"), (d,), _identity, _identity))
    out += _layer_norm(f"layer_norm2.{i}", (layer, "layer_norm2"), d)
  out.append(("pred_layer.proj.bias", ("pred_bias",), (v,), _identity, _identity))
  return out


def _layer_norm(name: str, path: tuple[str, ...], d: int) -> list[Rule]:
  return [(f"{name}.weight", path + ("scale",), (d,), _identity, _identity),
          (f"{name}.bias", path + ("bias",), (d,), _identity, _identity)]


# --------------------------------------------------------------------------------------------- inspecting a state
def count_layers(state: Mapping[str, Any]) -> int:
  """Number of layers in an XLM state dict (1 + the largest i of `attentions.i.*`)."""
  ids = [int(m.group(1)) for k in state for m in [re.match(r"attentions\.(\d+)\.", k)] if m]
  return max(ids) + 1 if ids else 0


def refuse_unsupported(state: Mapping[str, Any], where: str) -> None:
  """Product-key memory and adaptive-softmax checkpoints cannot be represented: say so before anything else."""
  if any(k.startswith("memories.") for k in state):
    raise UserError(f"{where} uses product-key memory layers (memories.* tensors, --use_memory true); xlm_jax "
                    "cannot represent them.")
  if any(k.startswith(("pred_layer.proj.head", "pred_layer.proj.tail")) for k in state):
    raise UserError(f"{where} uses an adaptive softmax output layer (--asm true); xlm_jax cannot represent it.")


def state_to_params(state: Mapping[str, np.ndarray], cfg: TransformerConfig, where: str,
                    vocab_name: str = "embeddings.weight") -> dict:
  """Our parameter tree (float32 numpy) from an XLM-named state dict; every key and shape is checked.

  `state` must already be stripped of `module.` / `transformer.` prefixes. `position_ids` (a transformers
  buffer) is ignored; `pred_layer.proj.weight` must equal `embeddings.weight` (xlm_jax always ties them); with
  `cfg.sinusoidal_embeddings` the stored position table is dropped (the caller checks it is the sinusoid).
  """
  refuse_unsupported(state, where)
  rules = _rules(cfg)
  expected = {r[0] for r in rules}
  ignorable = {"position_ids", "pred_layer.proj.weight"}
  if cfg.sinusoidal_embeddings:
    ignorable.add("position_embeddings.weight")
  missing = sorted(expected - set(state))
  unexpected = sorted(set(state) - expected - ignorable)
  if missing or unexpected:
    def some(names):
      return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")

    parts = []
    if missing:
      parts.append(f"missing {len(missing)} tensor(s) ({some(missing)})")
    if unexpected:
      parts.append(f"unexpected {len(unexpected)} ({some(unexpected)})")
    raise UserError(f"{where} does not match its config ({cfg.n_layers} layers, n_langs={cfg.n_langs}, "
                    f"use_lang_emb={cfg.use_lang_emb}, decoder={cfg.is_decoder}): {'; '.join(parts)}.")
  emb = np.asarray(state["embeddings.weight"])
  if emb.ndim == 2 and emb.shape[0] != cfg.vocab_size:
    raise UserError(f"{where}: the config says {cfg.vocab_size} words but {vocab_name} has {emb.shape[0]} rows; "
                    f"{max_vocab_hint(emb.shape[0])}.")
  params: dict = {}
  for name, path, shape, to_ours, _ in rules:
    value = np.asarray(state[name])
    if tuple(value.shape) != shape:
      raise UserError(f"{where}: tensor {name} has shape {tuple(value.shape)}, expected {shape} from the config "
                      f"(emb_dim={cfg.emb_dim}, n_heads={cfg.n_heads}, vocab={cfg.vocab_size}, "
                      f"max_positions={cfg.max_positions}).")
    if not np.issubdtype(value.dtype, np.floating):
      raise UserError(f"{where}: tensor {name} has dtype {value.dtype}; expected floating point weights.")
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = np.ascontiguousarray(to_ours(value.astype(np.float32), cfg))
  tied = state.get("pred_layer.proj.weight")
  if tied is not None and not np.array_equal(np.asarray(tied, np.float32), emb.astype(np.float32)):
    raise UserError(f"{where}: pred_layer.proj.weight differs from embeddings.weight (an untied output layer, "
                    "--share_inout_emb false); xlm_jax ties them and cannot represent this model.")
  return params


def params_to_state(params: Mapping, cfg: TransformerConfig) -> dict[str, np.ndarray]:
  """XLM-named float32 tensors (no prefixes, without the tied `pred_layer.proj.weight`) from our parameters.

  A sinusoidal model gets its position table computed exactly as the reference does.
  """
  state = {}
  for name, path, shape, _, to_xlm in _rules(cfg):
    node: Any = params
    for key in path:
      node = node[key]
    value = np.ascontiguousarray(to_xlm(np.asarray(node, np.float32), cfg))
    assert value.shape == shape, (name, value.shape, shape)
    state[name] = value
  if cfg.sinusoidal_embeddings:
    state["position_embeddings.weight"] = sinusoidal_table_np(cfg.max_positions, cfg.emb_dim)
  return state


def check_sinusoidal(state: Mapping[str, np.ndarray], cfg: TransformerConfig, where: str) -> bool:
  """True when the stored position table of a sinusoidal model is the sinusoid (to float32 rounding)."""
  table = state.get("position_embeddings.weight")
  if table is None:
    return True
  table = np.asarray(table, np.float32)
  if table.shape != (cfg.max_positions, cfg.emb_dim):
    raise UserError(f"{where}: position_embeddings.weight has shape {table.shape}, expected "
                    f"{(cfg.max_positions, cfg.emb_dim)}.")
  return bool(np.max(np.abs(table - sinusoidal_table_np(cfg.max_positions, cfg.emb_dim))) <= 1e-5)


def strip_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
  """Remove `prefix` from the keys that have it (all of them, for `module.`)."""
  return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}
