"""The hyper-parameters of an XLM Transformer, as one frozen dataclass.

Every field changes the computation or the parameter shapes; nothing about data, optimisation or sharding lives
here, so a `TransformerConfig` is all that is needed to rebuild a model from a checkpoint bundle.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

ACTIVATIONS = ("gelu", "relu")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
REMAT_POLICIES = ("none", "full", "dots_saveable")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Shape and behaviour of one XLM Transformer (encoder, or decoder when `is_decoder`).

  Fidelity notes (see shared/reference/xlm-reference.md section 1):
  - `ffn_dim` is 4 * emb_dim in every published model; it is a field only so it is explicit in the bundle.
  - Language embeddings exist only when `n_langs > 1 and use_lang_emb`; otherwise `langs` is ignored, not rejected.
  - `max_positions` is 512 in the reference (a hard-coded constant there).
  - `causal` is the model's default attention mode (HF's `config.causal`); callers may override it per call
    (CLM training on an MLM model, or the NMT decoder which is always causal).
  - `dtype` is the matmul input dtype; accumulation, LayerNorm, softmax and the residual stream stay float32, and
    parameters are always stored in float32.
  - `remat` (none | full | dots_saveable: keep only matmul outputs) and `scan_layers` (one `nn.scan` over the
    layers, parameters stacked under `layers` with a leading layer axis, instead of `layers_0..n-1`) change memory
    and compile time, not the function; `xlm_jax.model.layout` converts between the two parameter layouts.
    `remat` also accepts the booleans of older bundles (False = none, True = full).
  """

  vocab_size: int
  emb_dim: int
  n_layers: int
  n_heads: int
  n_langs: int = 1
  use_lang_emb: bool = True
  max_positions: int = 512
  sinusoidal_embeddings: bool = False
  causal: bool = False
  activation: str = "gelu"
  dropout: float = 0.0
  attention_dropout: float = 0.0
  layer_norm_eps: float = 1e-12
  pad_id: int = 2
  is_decoder: bool = False
  dtype: str = "float32"
  remat: str = "none"
  scan_layers: bool = False

  def __post_init__(self):
    if isinstance(self.remat, bool):
      object.__setattr__(self, "remat", "full" if self.remat else "none")
    problems = []
    if self.remat not in REMAT_POLICIES:
      problems.append(f"remat={self.remat!r} is not one of {REMAT_POLICIES}")
    if self.emb_dim % self.n_heads:
      problems.append(f"emb_dim={self.emb_dim} is not divisible by n_heads={self.n_heads}")
    if self.activation not in ACTIVATIONS:
      problems.append(f"activation={self.activation!r} is not one of {ACTIVATIONS}")
    if self.dtype not in DTYPES:
      problems.append(f"dtype={self.dtype!r} is not one of {tuple(DTYPES)}")
    for name in ("vocab_size", "emb_dim", "n_layers", "n_heads", "n_langs", "max_positions"):
      if getattr(self, name) < 1:
        problems.append(f"{name}={getattr(self, name)} must be at least 1")
    if problems:
      # Imported here to keep this module free of package-level imports.
      from xlm_jax.errors import UserError
      raise UserError("invalid model config: " + "; ".join(problems) + ".")

  @property
  def ffn_dim(self) -> int:
    return 4 * self.emb_dim

  @property
  def head_dim(self) -> int:
    return self.emb_dim // self.n_heads

  @property
  def has_lang_emb(self) -> bool:
    return self.n_langs > 1 and self.use_lang_emb

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "TransformerConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      from xlm_jax.errors import UserError
      raise UserError(f"unknown model config field(s) {unknown}; known fields are {sorted(known)}.")
    return cls(**dict(values))

  def replace(self, **changes) -> "TransformerConfig":
    return dataclasses.replace(self, **changes)


def count_parameters(cfg: TransformerConfig) -> int:
  """Parameters in the reference layout: tied output projection (counted once) plus its own bias.

  Sinusoidal position tables are counted too, as the reference stores them as a (frozen) weight.
  """
  d, v, l = cfg.emb_dim, cfg.vocab_size, cfg.n_layers
  emb = v * d + cfg.max_positions * d + (cfg.n_langs * d if cfg.has_lang_emb else 0) + 2 * d
  attn = 4 * (d * d + d)
  ffn = d * cfg.ffn_dim + cfg.ffn_dim + cfg.ffn_dim * d + d
  per_layer = attn + 2 * d + ffn + 2 * d
  if cfg.is_decoder:
    per_layer += attn + 2 * d
  return emb + l * per_layer + v
