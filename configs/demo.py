"""The demo: the whole chain at toy scale on the project's generated corpus, in minutes on 2 CPU cores.

  python main.py --config=configs/demo.py --workdir=runs/demo

Pretraining (MLM + TLM) in WORKDIR/pretrain, then NMT xa<->xb seeded from it in WORKDIR/nmt, then held-out
MLM perplexity/accuracy and BLEU. Variant `configs/demo.py:pretrain` runs only the pretraining.
"""
import ml_collections

from xlm_jax.config_base import base_config


def get_config(arg: str | None = None):
  if arg not in (None, "", "demo", "pretrain", "nmt"):
    raise ValueError(f"unknown variant {arg!r}; choose demo, pretrain or nmt")
  c = base_config()
  c.task = "demo" if arg in (None, "", "demo") else arg
  c.data.corpus = "generated"
  c.data.languages = "xa,xb,xc"
  c.data.generated_sizes.n_mono = 20000
  c.data.generated_sizes.n_para = 10000
  c.data.vocab_size = 1000
  # MLM on each language, TLM on the pair the NMT phase translates (both orders). TLM on all six directions spreads
  # the same steps over three cross-lingual lexicons, and within the demo's budget the model then barely used the
  # translation in the row (held-out TLM accuracy with and without it within a point).
  c.data.mlm_steps = "xa,xb,xc,xa-xb,xb-xa"
  c.data.bptt = 128                    # a TLM pair of two 2-clause sentences fits: no pair is skipped
  c.data.batch_size = 16
  c.data.eval_rows = 128
  c.model.emb_dim = 128
  c.model.n_layers = 2
  c.model.n_heads = 4
  c.model.dropout = 0.1
  c.model.attention_dropout = 0.1
  c.model.dtype = "bfloat16"
  c.train.steps = 4000                 # the pretraining phase (about 4 minutes on 2 CPU cores with AVX-512 BF16)
  c.train.lr = 2e-3
  c.train.warmup_steps = 100
  c.train.clip_grad_norm = 1.0
  c.checkpoint.every = 500
  c.log.every = 100
  c.log.eval_every = 0                 # held-out evaluation at the end
  c.nmt.mt_steps = "xa-xb,xb-xa"
  c.nmt.src_len = c.nmt.tgt_len = 64
  c.nmt.bleu_sentences = 300
  c.demo = ml_collections.ConfigDict()
  c.demo.nmt_steps = 1000              # the NMT phase (about 2 minutes on 2 CPU cores with AVX-512 BF16)
  c.demo.nmt_lr = 2e-3
  c.demo.nmt_warmup_steps = 100
  c.demo.nmt_batch_size = 32           # NMT rows per step (pretraining packs 16 rows of 128)
  return c
