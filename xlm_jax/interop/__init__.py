"""Interoperability with the PyTorch world: transformers XLM directories and original XLM checkpoints.

Modules (the command line is `python -m xlm_jax.convert`, see `xlm_jax/convert.py`):
  hf            transformers `XLMWithLMHeadModel` directory <-> our layout (config, weights, tokenizer files)
  xlm_original  facebookresearch/XLM `.pth` (pretrained encoder or NMT encoder/decoder) -> our layout
  weights       XLM state-dict names <-> our parameter tree (transposes, head splits, tied output layer)
  tensors       safetensors read/write with numpy; PyTorch pickles read with weights_only=True
  xlm_bpe       the XLM BPE tokenizer (Moses + lowercase/accent removal + BPE merges), tokenizer kind "xlm_bpe"
  parity        max |Δlogit| between a bundle and transformers on a fixed right-padded batch with language ids
  bundle_io     the converted model as a bundle; all-or-nothing output directories

torch and transformers are optional: they are imported only to read `.bin`/`.pth` files and for the parity check.
"""
