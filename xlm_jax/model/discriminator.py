"""A language discriminator on encoder states: Lample et al. (2018)'s adversarial term for unsupervised MT.

"Unsupervised Machine Translation Using Monolingual Corpora Only" (ICLR 2018, section 2.5) trains an MLP to tell
from an encoder state which language the sentence was in, and the encoder to fool it, so that both languages are
encoded into one space. The shape follows that paper and facebookresearch/UnsupervisedMT's discriminator:
`n_layers` hidden layers of `hidden_dim` units, each Linear -> LeakyReLU(0.2) -> dropout, then a Linear to the
language logits. It reads one state per token; padding is the caller's to mask.

Parameters: `{"layer_0": {"kernel", "bias"}, ..., "out": {"kernel", "bias"}}` (float32, replicated: a few hundred
thousand parameters).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from xlm_jax.model.layers import Dropout, Linear


class LanguageDiscriminator(nn.Module):
  """`__call__(states [..., D]) -> language logits [..., n_langs]` (float32)."""

  n_langs: int
  hidden_dim: int = 1024
  n_layers: int = 3
  dropout: float = 0.0

  @nn.compact
  def __call__(self, states: jnp.ndarray, *, deterministic: bool = True) -> jnp.ndarray:
    x = states.astype(jnp.float32)
    for i in range(self.n_layers):
      x = Linear((self.hidden_dim,), (None, None), name=f"layer_{i}")(x)
      x = nn.leaky_relu(x, negative_slope=0.2)
      x = Dropout(self.dropout)(x, deterministic=deterministic)
    return Linear((self.n_langs,), (None, None), name="out")(x)


def init_discriminator(module: LanguageDiscriminator, dim: int, rng):
  """Boxed parameters of a fresh discriminator reading `dim`-wide states."""
  return module.init(rng, jnp.zeros((1, dim), jnp.float32))["params"]
