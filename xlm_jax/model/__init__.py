"""Pure Flax Linen model code: no data, checkpoint or mesh code lives here."""
from xlm_jax.model.config import TransformerConfig, count_parameters
from xlm_jax.model.transformer import Transformer, forward_flops_per_token, init_params, train_flops

__all__ = ["TransformerConfig", "Transformer", "count_parameters", "forward_flops_per_token", "init_params", "train_flops"]
