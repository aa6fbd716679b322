"""MLM + TLM pretraining on Multi30k (en, fr, de): real text, CPU-sized models.

  python main.py --config=configs/multi30k.py:tiny --workdir=runs/m30k_tiny      # minutes on 2 CPU cores
  python main.py --config=configs/multi30k.py:small --workdir=runs/m30k_small    # minutes on one GPU
  python main.py --config=configs/multi30k.py:base --workdir=runs/m30k_base      # hours on CPU; minutes on a GPU
  ... --config.data.corpus=/path/to/multi30k                                      # another copy of the data

The data directory defaults to `../shared/data/multi30k` next to this repository ($XLM_JAX_MULTI30K overrides it,
as does --config.data.corpus; gzip files
`{train,val,test_2016_flickr}.{en,de,fr,cs}.gz`, every language a line-by-line translation of the others). Each
language's file is used as monolingual text (MLM) and aligned with the others for TLM pairs.

`<variant>_halves` (e.g. `tiny_halves`) is the pretraining for unsupervised MT (configs/nmt.py:multi30k_unsup):
MLM only, on English lines 0-14,499 and French lines 14,500-28,999 of the training set (no pair is ever seen; the
BPE is trained on the same halves), languages en and fr.

`tiny` is tuned to show what TLM does in its budget: masked French tokens of the val pairs are predicted better
with the English in the row than without (the figures and the time on 2 CPU cores are in docs/results.md,
measured by benchmarks/multi30k_pretrain.py).
"""
import os

from xlm_jax.config_base import base_config

DATA = os.environ.get("XLM_JAX_MULTI30K") or os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "multi30k"))
VARIANTS = {
    "tiny": dict(emb_dim=128, n_layers=2, n_heads=4, vocab=4000, steps=3000, batch=16, bptt=128),
    "small": dict(emb_dim=256, n_layers=4, n_heads=8, vocab=8000, steps=6000, batch=32, bptt=128),
    "base": dict(emb_dim=512, n_layers=6, n_heads=8, vocab=10000, steps=50000, batch=64, bptt=128),
}


HALVES = "en:0:14500,fr:14500:29000"  # the unsupervised split: English of one half, French of the other


def get_config(arg: str | None = None):
  name = arg or "tiny"
  halves = name.endswith("_halves")
  name = name[:-len("_halves")] if halves else name
  if name not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r}; choose one of {sorted(VARIANTS)}, or one of them + '_halves'")
  v = VARIANTS[name]
  c = base_config()
  c.task = "pretrain"
  c.data.corpus = DATA
  c.data.aligned = True
  c.data.split_names = "valid:val,test:test_2016_flickr"
  c.data.languages = "de,en,fr"
  c.data.mlm_steps = "en,fr,de,en-fr,fr-en,en-de,de-en"
  c.data.vocab_size = v["vocab"]
  c.data.bptt = v["bptt"]
  c.data.batch_size = v["batch"]
  c.data.lg_sampling_factor = 0.7
  c.data.eval_rows = 128
  c.model.emb_dim = v["emb_dim"]
  c.model.n_layers = v["n_layers"]
  c.model.n_heads = v["n_heads"]
  c.model.dtype = "bfloat16"
  c.train.steps = v["steps"]
  # tiny: a high rate and a short warm-up, or the steps end on the unigram plateau (masked French 10.5% right
  # with the English in the row vs 9.9% without at lr 5e-4, warm-up 400); benchmarks/multi30k_pretrain.py measures it.
  c.train.lr = {"tiny": 2e-3, "small": 3e-4}.get(name, 2e-4)
  c.train.warmup_steps = {"tiny": 200, "small": 1000}.get(name, 4000)
  c.train.clip_grad_norm = 1.0
  c.checkpoint.every = {"tiny": 1000, "small": 2000}.get(name, 5000)
  c.log.every = 100
  c.log.eval_every = {"tiny": 1000, "small": 2000}.get(name, 5000)
  if halves:  # the pretraining for unsupervised MT: MLM only (TLM would read pairs), on the disjoint halves
    c.data.languages = "en,fr"
    c.data.mlm_steps = "en,fr"
    c.data.mono_lines = HALVES
    # fixed sinusoidal positions: with learned ones, MLM alone (no TLM pair to copy from) stays on the unigram
    # plateau (tiny: held-out masked accuracy 8% after 4,000 steps); sinusoidal ones leave it near step 1,500 and
    # reach 34% (en) / 37% (fr) by step 6,000 (docs/results.md, issue 14)
    c.model.sinusoidal_embeddings = True
  return c
