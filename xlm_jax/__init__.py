"""xlm_jax: cross-lingual language model pretraining (XLM: MLM, TLM, CLM) and transfer in JAX/Flax."""
__version__ = "0.1.0"


def load(path: str):
  """Open a checkpoint bundle (a workdir or one checkpoint step); see `xlm_jax.api.load`."""
  from xlm_jax.api import load as _load
  return _load(path)


__all__ = ["load", "__version__"]
