"""What an importer produces (`Converted`), how it becomes a bundle, and all-or-nothing output directories."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import tempfile
from typing import Any, Iterator, Mapping

import numpy as np

from xlm_jax.errors import UserError
from xlm_jax.model.config import TransformerConfig


@dataclasses.dataclass
class Converted:
  """A model read from another stack, in our layout, ready to be written as a bundle.

  `params` is our parameter tree (float32 numpy); for `architecture == "encoder_decoder"` it is
  {"encoder": ..., "decoder": ...} and `decoder_config` is set. `reference` holds what the parity check needs to
  rebuild the source model in transformers (XLM-named tensors of the encoder and the transformers config dict).
  """

  architecture: str
  config: TransformerConfig
  params: dict
  languages: list[str]
  tokenizer: Any
  source_config: dict
  source: dict
  decoder_config: TransformerConfig | None = None
  notes: list[str] = dataclasses.field(default_factory=list)
  reference: dict = dataclasses.field(default_factory=dict)

  def describe(self) -> str:
    c = self.config
    positions = "sinusoidal" if c.sinusoidal_embeddings else "learned"
    lang = (f"{c.n_langs} language(s) {self.languages}" + (", language embeddings" if c.has_lang_emb else
                                                           ", no language embeddings"))
    text = (f"{self.architecture}: {c.n_layers} layers, d={c.emb_dim}, {c.n_heads} heads, vocab {c.vocab_size}, "
            f"{lang}, {positions} positions (max {c.max_positions}), {c.activation}, "
            f"{'causal' if c.causal else 'bidirectional'}, dropout {c.dropout}/{c.attention_dropout}")
    if self.decoder_config is not None:
      text += f"; decoder {self.decoder_config.n_layers} layers with cross-attention"
    return text


def jsonable(value: Any) -> Any:
  """A JSON-able copy of `value`: tensors, arrays and other objects are dropped, tuples/sets become lists."""
  if value is None or isinstance(value, (bool, int, str)):
    return value
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, (np.floating,)):
    return jsonable(float(value))
  if isinstance(value, Mapping):
    out = {}
    for k, v in value.items():
      if isinstance(k, (str, int)) and not _is_array(v):
        out[str(k)] = jsonable(v)
    return out
  if isinstance(value, (list, tuple, set, frozenset)):
    items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
    return [jsonable(v) for v in items if not _is_array(v)]
  return None


def _is_array(v: Any) -> bool:
  return isinstance(v, np.ndarray) or type(v).__name__ in ("Tensor", "Parameter")


def bundle_meta(m: Converted) -> dict:
  from xlm_jax import checkpoint
  meta = {"format": checkpoint.BUNDLE_FORMAT, "task": "import", "architecture": m.architecture,
          "model": m.config.to_dict(), "languages": list(m.languages), "tokenizer": m.tokenizer.state(),
          "config": jsonable(m.source_config), "source": jsonable(m.source)}
  if m.decoder_config is not None:
    meta["decoder_model"] = m.decoder_config.to_dict()
  json.dumps(meta)  # fail here, not inside Orbax, if something is not JSON-able
  return meta


def save_bundle(directory: str, m: Converted) -> None:
  """Write `m` as a bundle (step 0 under `directory/checkpoints`) that `xlm_jax.load(directory)` opens."""
  from xlm_jax import checkpoint
  saver = checkpoint.Checkpointer(os.path.join(directory, "checkpoints"), async_save=False)
  try:
    saver.save(0, m.params, bundle_meta(m))
  finally:
    saver.close()


@contextlib.contextmanager
def staged_output(out_dir: str) -> Iterator[str]:
  """A temporary directory beside `out_dir`, renamed to `out_dir` only when the block succeeds.

  `out_dir` must not exist yet; on any failure the temporary directory (and any parent this created) is removed,
  so no half-written output is ever left behind.
  """
  out_dir = os.path.abspath(os.path.expanduser(out_dir))
  check_new_output(out_dir)
  parent = os.path.dirname(out_dir)
  created = None
  probe = parent
  while not os.path.exists(probe):
    created, probe = probe, os.path.dirname(probe)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
  try:
    yield tmp
    check_new_output(out_dir)
    os.rename(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    if created is not None:
      shutil.rmtree(created, ignore_errors=True)
    raise


def check_new_output(out_dir: str) -> None:
  if os.path.lexists(out_dir):
    raise UserError(f"the output directory {out_dir!r} already exists; give a new path (or remove it first).")
