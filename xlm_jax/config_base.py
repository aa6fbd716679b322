"""Defaults shared by every config file in configs/. Each field is documented where it is set.

Config files call `base_config()` and change what their experiment needs; `main.py` then applies
`--config.a.b=value` overrides. The dict is locked, so a mistyped field name fails instead of being ignored.
"""
from __future__ import annotations

import ml_collections

from xlm_jax.parallel import DEFAULT_RULES


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "pretrain"          # pretrain | demo | nmt | classify
  c.seed = 0                   # every random choice (init, data order, masks, dropout) derives from it
  c.compilation_cache_dir = "~/.cache/xlm_jax/jit"  # persistent XLA compilation cache; '' disables it
  c.host_malloc = "keep"       # keep: glibc keeps freed host memory mapped (faster CPU steps, no page faults per
                               # step; resident memory stays at its peak); system: glibc defaults (host_memory.py)

  c.model = ml_collections.ConfigDict()
  c.model.emb_dim = 256
  c.model.n_layers = 4
  c.model.n_heads = 4
  c.model.use_lang_emb = True          # language embeddings (only when there are 2+ languages)
  c.model.max_positions = 512
  c.model.sinusoidal_embeddings = False
  c.model.activation = "gelu"          # gelu (exact erf form) | relu
  c.model.dropout = 0.1
  c.model.attention_dropout = 0.1
  c.model.dtype = "float32"            # matmul input dtype: float32 | bfloat16 (f32 accumulation and weights)
  c.model.remat = "none"               # recompute in the backward pass: none | full | dots_saveable (keep matmuls)
  c.model.scan_layers = False          # one nn.scan over the layers (fast compiles for deep models; stacked params)
  c.model.decoder_layers = 0           # NMT decoder depth; 0 = as deep as the encoder

  c.data = ml_collections.ConfigDict()
  c.data.corpus = "generated"          # comma-separated sources: 'generated' (the project's synthetic corpus), a
                                       # folder of {split}.{lang} files, 'tfds:<name>' (a prepared TFDS dataset)
  c.data.aligned = False               # folder's {split}.{lang} files translate each other line by line (Multi30k)
  c.data.split_names = ""              # folder file prefixes per split, e.g. 'valid:val,test:test_2016_flickr'
  c.data.tfds_data_dir = ""            # where prepared TFDS datasets live ('' = TFDS's default)
  c.data.mono_lines = ""               # training lines of monolingual text per language: 'cs:2000' (the first
                                       # 2,000) or 'en:0:14500,fr:14500:29000' (ranges); '' = all lines
  c.data.tokenizer = ""                # reuse the tokenizer of a bundle/workdir or a tokenizer.json ('' = train one)
  c.data.languages = "xa,xb,xc"        # comma-separated codes; language ids are their alphabetical order
  c.data.generated_sizes = ml_collections.ConfigDict(dict(n_mono=20000, n_para=10000, n_valid=500, n_test=500))
  c.data.vocab_size = 2000             # shared BPE vocabulary, specials and language tags included
  c.data.tokenizer_alpha = 0.5         # language sampling for BPE training: p_l ~ n_l**alpha
  c.data.tokenizer_sentences = 300000  # sentences sampled to train the BPE
  c.data.mlm_steps = "xa,xb,xc"        # reference syntax: 'en,fr' monolingual MLM, 'en-fr' TLM (en first)
  c.data.clm_steps = ""                # 'en,fr' monolingual CLM
  c.data.lambda_mlm = "1"              # loss weight: constant or piecewise-linear '0:1,10000:0.1'
  c.data.lambda_clm = "1"
  c.data.mixing = "shared"             # shared: all objectives in one update | separate: one objective per update
  c.data.lg_sampling_factor = -1.0     # p ~ n**factor over languages; -1 = uniform (the reference default)
  c.data.bptt = 128                    # row length L
  c.data.batch_size = 32               # global rows per step (all processes together)
  c.data.pack_rows = 8                 # rows packed together (first-fit decreasing); a row group shares a language
  c.data.pack_pool = 1.3               # pairs drawn per packed group, relative to what fits
  c.data.max_len = 100                 # pairs with a sentence longer than this (tokens) are dropped and counted
  c.data.word_pred = 0.15
  c.data.word_mask_keep_rand = "0.8,0.1,0.1"
  c.data.sample_alpha = 0.0            # > 0: mask frequent tokens less, p ~ count**-sample_alpha
  c.data.eval_rows = 256               # held-out rows per language and objective
  c.data.cache_dir = ""                # prepared datasets; default WORKDIR/data
  c.data.workers = -1                  # input worker processes building batches (-1: the cores available; 0: a
                                       # thread of the training process)
  c.data.device_prefetch = 2           # batches copied to the devices ahead of the step that uses them
  c.data.steps_per_element = 16       # steps a worker builds and hands over at once (one transfer per element);
                                       # the batches are the same for any value
  c.data.prepare_workers = 1           # processes encoding text while preparing the token stores
  # classification (config.task='classify'): comma-separated LANGS:SOURCE items (xlm_jax/data/labelled.py), e.g.
  # 'en:/path/train.tsv', 'de+fr:/data/dev.{lang}.tsv.gz', 'de:xnli-official:/x/xnli.dev.tsv', 'ar:tfds:xnli/test'
  c.data.train = ""                    # fine-tuning sets
  c.data.eval = ""                     # held-out sets evaluated every log.eval_every steps (model selection)
  c.data.test = ""                     # sets evaluated once with the selected model ('' = the table shows eval)

  c.init = ml_collections.ConfigDict()  # NMT: where the encoder and decoder start from
  c.init.bundle = ""                   # a pretraining workdir or checkpoint step
  c.init.decoder_bundle = ""           # another bundle for the decoder ('' = the same)
  c.init.encoder = "pretrained"        # pretrained | scratch
  c.init.decoder = "pretrained"        # pretrained | scratch (cross-attention always starts fresh)

  c.nmt = ml_collections.ConfigDict()
  c.nmt.mt_steps = ""                  # supervised MT directions, e.g. 'en-fr,fr-en'
  c.nmt.ae_steps = ""                  # denoising auto-encoding languages, e.g. 'en,fr'
  c.nmt.bt_steps = ""                  # on-the-fly back-translation, e.g. 'en-fr-en,fr-en-fr'
  c.nmt.lambda_mt = "1"
  c.nmt.lambda_ae = "1"                # the reference's UNMT recipe: '0:1,100000:0.1,300000:0'
  c.nmt.lambda_bt = "1"
  c.nmt.lambda_dis = "0"               # adversarial language discriminator on the encoder (Lample et al. 2018); 0 = off
  c.nmt.dis_layers = 3                 # its hidden layers (the paper: 3 x 1024, LeakyReLU 0.2)
  c.nmt.dis_hidden_dim = 1024
  c.nmt.dis_dropout = 0.0
  c.nmt.word_shuffle = 0.0             # AE noise (reference UNMT: 3, 0.1, 0.1)
  c.nmt.word_dropout = 0.0
  c.nmt.word_blank = 0.0
  c.nmt.src_len = 64                   # packed source row length
  c.nmt.tgt_len = 64                   # packed target row length
  c.nmt.bt_len = 48                    # back-translation: sentence row length (and generated length cap)
  c.nmt.bt_max_len_a = 1.3             # generated length <= a * source length + b, as the reference
  c.nmt.bt_max_len_b = 5.0
  c.nmt.unsupervised = False           # True: no sentence pair may reach training (every MT direction needs its
                                       # own folder in direction_corpora; valid/test pairs only score BLEU)
  c.nmt.direction_corpora = ""         # a folder of corpora per MT direction, <src>-<tgt>/train.* (e.g. word-by-word
                                       # pseudo-parallel text): their train pairs feed that direction's MT objective
  c.nmt.output_vocab_min_count = 0     # >0: each language produces only words seen this often in its monolingual
                                       # training text (back-translation and the run's BLEU decoding only: the
                                       # bundle does not store it, xlm_jax.translate decodes without it); 0 = off
  c.nmt.beam_size = 1                  # evaluation decoding
  c.nmt.length_penalty = 1.0
  c.nmt.early_stopping = False
  c.nmt.eval_max_len_a = 1.5
  c.nmt.eval_max_len_b = 10.0
  c.nmt.bleu_split = "valid"           # BLEU during training on this split ('test' for final numbers)
  c.nmt.bleu_sentences = 500           # first N sentences of the split (0 = all)
  c.nmt.sample_translations = 2        # printed at each evaluation
  c.nmt.roundtrip_sentences = 0        # unsupervised model selection: round-trip BLEU (l1->l2->l1) on this many
                                       # monolingual lines of roundtrip_split per back-translation direction (0 = off)
  c.nmt.roundtrip_split = "valid"

  c.classify = ml_collections.ConfigDict()  # config.task='classify' (xlm_jax/train/classify.py)
  c.classify.mode = "zero_shot"        # zero_shot | translate_train | translate_test
  c.classify.translate_bundle = ""     # an NMT bundle translating the train sets (translate_train) or the held-out
                                       # sets (translate_test); '' = the given files are already translated
  c.classify.labels = ""               # label names in order ('' = the training labels, sorted)
  c.classify.text_columns = ""         # '' = found by name (premise/hypothesis, sentence1/sentence2, text, ...)
  c.classify.label_column = ""         # '' = label or gold_label
  c.classify.row_length = 128          # tokens per packed row; longer examples are truncated (longest side first)
  c.classify.head_dropout = 0.1        # dropout before the linear head (XLM's --dropout)
  c.classify.lr_encoder = 2.5e-5       # peak learning rate of the encoder (XLM's --optimizer_e)
  c.classify.lr_head = 2.5e-5          # peak learning rate of the head (XLM's --optimizer_p)
  c.classify.finetune_layers = "0:"    # trained slice of [embeddings, layer 0, ..., layer n-1]: '0:' all, '3:' the
                                       # top layers of a 4-layer model only, ':0' the head alone (XLM's 'i:j')
  c.classify.select_lang = ""          # model selection on the eval set of this language ('' = the train language)
  c.classify.seeds = "0"               # fine-tuning seeds (one run each in WORKDIR/seed_<s>; mean and std reported)
  c.classify.unknown_lang = "error"    # a data language the bundle lacks: error | train (use the training
                                       # language's id, marked in the table)
  c.classify.translate_beam = 1        # beam of the translations made for translate_train / translate_test
  c.classify.collapse_share = 0.9      # warn when one class takes more than this share of a set's predictions

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  c.train.lr = 1e-4
  c.train.schedule = "inverse_sqrt"    # inverse_sqrt (XLM) | constant | linear_warmup_cosine
  c.train.warmup_steps = 4000
  c.train.warmup_init_lr = 1e-7
  c.train.beta1 = 0.9
  c.train.beta2 = 0.98
  c.train.eps = 1e-6
  c.train.weight_decay = 0.0
  c.train.clip_grad_norm = 5.0         # global norm; 0 disables
  c.train.accumulate_gradients = 1     # micro-batches per update (batch_size must divide)
  c.train.nonfinite = "skip"           # a NaN/inf loss or gradient: skip (drop the update, count, log) | stop (exit 1)

  c.mesh = ml_collections.ConfigDict()
  c.mesh.preset = ""                   # dp | fsdp | fsdp_tp: sizes filled from the devices; '' = the sizes below
  c.mesh.data = -1                     # -1: all devices not used by the other axes
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.mesh.rules = [list(r) for r in DEFAULT_RULES]

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 500
  c.checkpoint.keep = 3
  c.checkpoint.async_save = True

  c.log = ml_collections.ConfigDict()
  c.log.every = 50
  c.log.eval_every = 500               # 0: evaluate at the end only
  c.log.progress_bar = True
  c.log.batch_checksums = False        # append each step's batch checksum to batch_checksums.jsonl (resume audits)
  c.log.peak_flops = 0.0               # per-device peak for MFU; 0 = measure a matmul on this device
  c.log.profile_steps = ""             # 'START:STOP': jax.profiler trace of those steps into WORKDIR/profile

  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator = ""       # host:port of process 0; '' = single process or auto-detect (TPU, SLURM)
  c.distributed.num_processes = 0
  c.distributed.process_id = -1
  c.distributed.timeout_s = 300        # wait for the coordinator and every process, then stop naming the address
  return c


def parse_list(text: str) -> list[str]:
  return [s.strip() for s in str(text).split(",") if s.strip()]


def parse_languages(text: str, field: str = "config.data.languages") -> list[str]:
  """The sorted language codes of a comma-separated list; a code named twice is a `UserError` (the language ids
  are indices into this list, so a duplicate would shift every id after it)."""
  from xlm_jax.errors import UserError
  codes = parse_list(text)
  twice = sorted({c for c in codes if codes.count(c) > 1})
  if twice:
    raise UserError(f"{field}={text!r} names {', '.join(repr(c) for c in twice)} more than once; list each language "
                    "once.")
  return sorted(codes)


def override(config, values: dict) -> None:
  """Set dotted fields in place: override(c, {"train.steps": 10, "model.emb_dim": 64}). Unknown fields fail
  (the config is locked), as they do on the command line. A number given for a string field (a loss weight such
  as `nmt.lambda_dis`, which may also be a schedule) is set as its text, as the command line would."""
  for key, value in values.items():
    node = config
    *path, last = key.split(".")
    for part in path:
      node = getattr(node, part)
    if last in node and isinstance(node[last], str) and isinstance(value, (int, float)) \
        and not isinstance(value, bool):
      value = str(value)
    setattr(node, last, value)


def load_config_module(path: str):
  """Import a config file by path (what `--config=` does), without the repository on `sys.path`."""
  import importlib.util
  import os
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(path):
    from xlm_jax.errors import UserError
    raise UserError(f"config file {path} does not exist.")
  name = "xlm_jax_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`load_config("configs/multi30k.py:tiny")` -> the config `--config=configs/multi30k.py:tiny` gives."""
  path, _, arg = spec.partition(":")
  return load_config_module(path).get_config(arg or None)
