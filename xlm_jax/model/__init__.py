"""Pure Flax Linen model code: no data, checkpoint or mesh code lives here."""
from xlm_jax.model.config import TransformerConfig, count_parameters
from xlm_jax.model.transformer import (EncoderDecoder, Transformer, forward_flops_per_token, init_encoder_decoder,
                                       init_params, train_flops)

__all__ = ["TransformerConfig", "Transformer", "EncoderDecoder", "count_parameters", "forward_flops_per_token",
           "init_params", "init_encoder_decoder", "train_flops"]
from xlm_jax.model.classifier import Classifier, init_classifier  # noqa: E402

__all__ += ["Classifier", "init_classifier"]
