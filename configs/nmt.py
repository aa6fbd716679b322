"""NMT seeded from a pretraining bundle (XLM's `--reload_model 'mlm.pth,mlm.pth'`).

  python main.py --config=configs/nmt.py:demo --workdir=runs/nmt --config.init.bundle=runs/demo/pretrain
  python main.py --config=configs/nmt.py:multi30k --workdir=runs/nmt_enfr --config.init.bundle=runs/m30k \
      --config.nmt.mt_steps=en-fr,fr-en
  python benchmarks/unmt_word_translation.py --frequency-prior 0.05 --write-pseudo runs/unmt/word_by_word
  python main.py --config=configs/nmt.py:multi30k_unsup --workdir=runs/unmt --config.init.bundle=runs/m30k_halves

Variants:
  demo            supervised MT between the generated languages xa and xb
  multi30k        supervised MT on Multi30k (set nmt.mt_steps to the directions you want)
  multi30k_unsup  unsupervised MT: denoising + on-the-fly back-translation on two disjoint halves of the Multi30k
                  training set (English from lines 0-14,499, French from lines 14,500-28,999: no sentence pair is
                  ever seen), the reference's UNMT noise and loss-weight settings; seed it from an MLM pretraining
                  on the same halves (configs/multi30k.py:<size>_halves); its MT objective reads word-by-word
                  pseudo-parallel text (nmt.direction_corpora, written by benchmarks/unmt_word_translation.py
                  --write-pseudo), never a sentence pair; benchmarks/multi30k_unmt.py runs all of it end to end
The encoder/decoder initialisation is `config.init.encoder` / `config.init.decoder` in {pretrained, scratch}.
"""
import os

from xlm_jax.config_base import base_config, load_config_module

# the sibling file, by path: config files are loaded by path and the repository need not be on sys.path
multi30k = load_config_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "multi30k.py"))


def get_config(arg: str | None = None):
  name = arg or "demo"
  c = base_config()
  c.task = "nmt"
  c.train.schedule = "inverse_sqrt"
  c.train.clip_grad_norm = 1.0
  c.model.dropout = 0.1
  c.model.attention_dropout = 0.1
  c.model.dtype = "bfloat16"
  c.data.batch_size = 32
  c.data.eval_rows = 64
  c.log.every = 100
  if name == "demo":
    c.data.corpus = "generated"
    c.data.languages = "xa,xb,xc"
    c.nmt.mt_steps = "xa-xb,xb-xa"
    c.nmt.src_len = c.nmt.tgt_len = 64
    c.train.steps = 500
    c.train.lr = 2e-3
    c.train.warmup_steps = 100
    c.log.eval_every = 0
    c.checkpoint.every = 400
    c.nmt.bleu_sentences = 200
  elif name in ("multi30k", "multi30k_unsup"):
    c.data.corpus = multi30k.DATA
    c.data.aligned = True
    c.data.split_names = "valid:val,test:test_2016_flickr"
    c.data.languages = "de,en,fr"
    c.nmt.src_len = c.nmt.tgt_len = 96
    c.nmt.bt_len = 48
    c.train.steps = 6000
    c.train.lr = 5e-4
    c.train.warmup_steps = 500
    c.log.eval_every = 2000
    c.checkpoint.every = 1000
    c.nmt.bleu_sentences = 500
    if name == "multi30k":
      c.nmt.mt_steps = "en-fr,fr-en"
    else:
      # the reference's UNMT recipe (XLM README): denoising + on-the-fly back-translation, noise 3 / 0.1 / 0.1,
      # denoising annealed '0:1,100000:0.1,300000:0' (it was 0.1 by step 4,000 here before issue 14)
      c.data.languages = "en,fr"                    # runs from scratch; a pretrained bundle's languages win
      c.nmt.ae_steps = "en,fr"
      c.nmt.bt_steps = "en-fr-en,fr-en-fr"
      c.data.mono_lines = multi30k.HALVES
      c.nmt.word_shuffle, c.nmt.word_dropout, c.nmt.word_blank = 3.0, 0.1, 0.1
      c.nmt.lambda_ae = "0:1,100000:0.1,300000:0"
      # denoising rows of 48 tokens hold about 3 sentences (framed: 15 tokens en, 17 fr with the tiny halves BPE):
      # per step about 1,400 denoising and 500 back-translation target tokens (96-token rows made denoising 5-6x
      # the back-translation, each objective's mean loss weighing the same)
      c.nmt.src_len = c.nmt.tgt_len = 48
      c.nmt.roundtrip_sentences = 250              # unsupervised model selection (round-trip BLEU), logged
      # Lample et al. (2018)'s word-by-word start (issue 14): unsupervised word translation of the halves (vectors
      # mapped without any pair, benchmarks/unmt_word_translation.py --frequency-prior 0.05 --write-pseudo FOLDER)
      # turns each real sentence into a rough one in the other language; those (rough -> real) pairs train MT per
      # direction, weighted 1 -> 0 over the first 3,000 steps while back-translation takes over
      c.nmt.unsupervised = True                    # no sentence pair of the corpus reaches training
      c.nmt.mt_steps = "en-fr,fr-en"
      c.nmt.direction_corpora = "runs/unmt/word_by_word"
      c.nmt.lambda_mt = "0:1,3000:0"
  else:
    raise ValueError(f"unknown variant {name!r}; choose demo, multi30k or multi30k_unsup")
  return c
