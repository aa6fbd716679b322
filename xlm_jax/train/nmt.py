"""Neural machine translation seeded from a pretraining bundle: supervised MT, denoising AE, back-translation.

Orchestration only: builds the encoder-decoder from a pretrained bundle (or from scratch), the data, the loss and
BLEU evaluation, and hands a `TrainTask` to the shared loop.

Initialisation (`config.init`), as in XLM's `--reload_model 'enc.pth,dec.pth'`: the encoder and the decoder are
each `pretrained` (every parameter copied from the bundle: embeddings, positions, language embeddings, all
self-attention and feed-forward layers, the output bias) or `scratch`; the decoder's cross-attention
(`encoder_attn`) and its LayerNorm (`layer_norm15`) are the only parameters a pretrained encoder does not have,
so they always start fresh. A table of loaded / fresh / ignored parameters is printed and saved to
`WORKDIR/init_table.txt`. Tokenizer, vocabulary and widths must match between the bundles; the bundle's language
list fixes the language ids. The pretraining may have run on any mesh: parameters are read on the host and
placed onto this run's shardings.

The target language reaches the decoder only through its language embedding; there is one BOS, `</s>`.

Adversarial alignment (`config.nmt.lambda_dis`, off at '0'), as Lample et al. (2018): a `LanguageDiscriminator`
reads the encoder states of the denoising sources and learns their language (objective `dis`, weight 1: its
accuracy, `dis_acc`, near 1/n_langs means the languages cannot be told apart); the encoder learns to make it
predict another language (objective `adv`, weight `lambda_dis`). Both are terms of the one loss and one optimizer
step: `dis` reads the states through `stop_gradient` (it trains only the discriminator), `adv` reads the
discriminator's parameters through `stop_gradient` (it trains only the encoder). The reference alternates
separate discriminator and encoder updates, with the encoder in eval mode for the former; here both read the
same (noised, dropped-out) states. Its parameters live beside the model's, `{"encoder", "decoder",
"discriminator"}`; translation reads only the first two.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from xlm_jax import checkpoint as ckpt
from xlm_jax import decode as decode_lib
from xlm_jax import parallel, paths, run_setup
from xlm_jax.config_base import parse_languages
from xlm_jax.data.noise import NoiseConfig
from xlm_jax.data.mixture import BuiltIn, Entry, Mixture, StepSpec, objectives, parse_nmt_steps
from xlm_jax.data import sources as sources_lib
from xlm_jax.data.rows import BtRows, PairIndex, TranslationRows
from xlm_jax.errors import UserError
from xlm_jax.evaluate import bleu
from xlm_jax.model import EncoderDecoder, TransformerConfig, forward_flops_per_token, init_encoder_decoder
from xlm_jax.model.discriminator import LanguageDiscriminator, init_discriminator
from xlm_jax.tokenizer import tokenizer_from_state
from xlm_jax.train.loop import Loss, Sums, TrainTask, prediction_sums, train
from xlm_jax.train.optim import parse_lambda
from xlm_jax.translate import translate_texts

def load_init_bundles(config) -> tuple[dict | None, dict | None, Any, Any]:
  """(encoder meta, decoder meta, encoder params, decoder params) of the bundles `config.init` names, on the host."""
  enc_path = config.init.bundle
  dec_path = config.init.decoder_bundle or enc_path
  want = {"encoder": config.init.encoder, "decoder": config.init.decoder}
  for part, how in want.items():
    if how not in ("pretrained", "scratch"):
      raise UserError(f"config.init.{part}={how!r} must be 'pretrained' or 'scratch'.")
    if how == "pretrained" and not (enc_path if part == "encoder" else dec_path):
      raise UserError(f"config.init.{part}='pretrained' needs config.init.bundle (a pretraining workdir or step).")
  metas, params = {}, {}
  for part, path in (("encoder", enc_path), ("decoder", dec_path)):
    if path:
      p, m = ckpt.restore_params(path)
      metas[part], params[part] = m, run_setup.load_bundle_part(p, m, part)
  return metas.get("encoder"), metas.get("decoder"), params.get("encoder"), params.get("decoder")


def check_bundles_agree(enc_meta: Mapping, dec_meta: Mapping) -> None:
  a, b = TransformerConfig.from_dict(enc_meta["model"]), TransformerConfig.from_dict(dec_meta["model"])
  ta, tb = tokenizer_from_state(enc_meta["tokenizer"]), tokenizer_from_state(dec_meta["tokenizer"])
  problems = []
  if ta.fingerprint() != tb.fingerprint():
    problems.append("their tokenizers differ")
  for field in ("vocab_size", "emb_dim", "n_heads", "n_langs", "max_positions"):
    if getattr(a, field) != getattr(b, field):
      problems.append(f"{field} {getattr(a, field)} vs {getattr(b, field)}")
  if list(enc_meta.get("languages", [])) != list(dec_meta.get("languages", [])):
    problems.append(f"languages {enc_meta.get('languages')} vs {dec_meta.get('languages')}")
  if problems:
    raise UserError(f"the encoder bundle ({enc_meta['_root']}) and the decoder bundle ({dec_meta['_root']}) do not "
                    f"match: {'; '.join(problems)}; seed both from one pretraining (or matching ones).")


def model_configs(config, meta: Mapping | None, vocab_size: int, n_langs: int, pad_id: int):
  """Encoder and decoder configs: the bundle's shapes (dropout and compute dtype from `config.model`)."""
  if config.model.scan_layers:
    raise UserError("config.model.scan_layers=True is for pretraining; NMT decodes layer by layer (KV cache), so "
                    "its layers stay unrolled: drop the setting (a scanned pretraining bundle seeds NMT as is).")
  run = {k: config.model[k] for k in ("dropout", "attention_dropout", "dtype", "remat")}
  if meta is not None:  # the bundle decides the shapes; config.model's shape fields are for runs without one
    enc = TransformerConfig.from_dict(meta["model"]).replace(is_decoder=False, causal=False, scan_layers=False,
                                                             **run)
  else:
    enc = run_setup.model_config(config, vocab_size, n_langs, pad_id)
  dec_layers = config.model.decoder_layers or enc.n_layers
  return enc, enc.replace(is_decoder=True, causal=True, n_layers=dec_layers)


def seed_params(fresh: Any, enc_src: Any, dec_src: Any, init) -> tuple[Any, list[tuple[str, str]]]:
  """Copy pretrained parameters into a fresh NMT tree; returns (params, table rows (path, status)).

  An encoder bundle has no cross-attention, so `encoder_attn` and `layer_norm15` stay fresh; a decoder taken from
  an MT bundle brings them along. Parts other than the encoder and the decoder (the discriminator) stay fresh."""
  fresh_host = jax.device_get(fresh)
  table = []
  out = {}
  for part, source, how in (("encoder", enc_src, init.encoder), ("decoder", dec_src, init.decoder)):
    out[part], rows = run_setup.copy_matching(fresh_host[part], source if how == "pretrained" else None, part,
                                              "NMT model")
    table += rows
  for part in sorted(set(fresh_host) - set(out)):  # the discriminator: always fresh
    out[part], rows = run_setup.copy_matching(fresh_host[part], None, part, "NMT model")
    table += rows
  placed = jax.tree.map(lambda new, old: jax.device_put(new, old.sharding), out, fresh)
  return placed, table


def model_params(params: Mapping) -> dict:
  """The encoder-decoder's parameters of an NMT tree (without the discriminator's): what translation reads."""
  return {"encoder": params["encoder"], "decoder": params["decoder"]}


def _logits_and_states(model: EncoderDecoder, src_tokens, src_positions, src_langs, src_segments, tgt_tokens,
                       tgt_positions, tgt_langs, tgt_segments, index, deterministic: bool):
  """`EncoderDecoder.__call__` that also returns the encoder states (a `method=` for one `apply`)."""
  hidden = model.encode(src_tokens, src_positions, src_langs, src_segments, deterministic=deterministic)
  logits = model.decode(tgt_tokens, tgt_positions, tgt_langs, tgt_segments, hidden, src_segments, index,
                        deterministic=deterministic)
  return logits, hidden


def adversarial_sums(discriminator: LanguageDiscriminator, d_params, states, langs, mask, rng,
                     deterministic: bool) -> dict[str, Sums]:
  """`dis`: the discriminator's cross-entropy on the true language of every real token (gradient to the
  discriminator only); `adv`: its cross-entropy on another language, drawn uniformly (gradient to the encoder
  only). `mask` [B, S] marks real tokens; `langs` [B, S] their language ids."""
  weights = mask.astype(jnp.float32)
  rngs = {} if deterministic else {"dropout": jax.random.fold_in(rng, 1)}
  logits = discriminator.apply({"params": d_params}, jax.lax.stop_gradient(states), deterministic=deterministic,
                               rngs=rngs)
  n = discriminator.n_langs
  key = jax.random.fold_in(rng if rng is not None else jax.random.key(0), 2)
  fake = (langs + jax.random.randint(key, langs.shape, 1, max(n, 2))) % n
  fooled = discriminator.apply({"params": jax.lax.stop_gradient(d_params)}, states, deterministic=True)
  return {"dis": prediction_sums(logits, langs, weights), "adv": prediction_sums(fooled, fake, weights)}


def make_loss(model: EncoderDecoder, lambdas: Mapping[str, Any], bt_decode, pad_id: int,
              discriminator: LanguageDiscriminator | None = None, vocab_mask=None) -> Loss:
  """MT, denoising AE and back-translation: per objective, the summed cross-entropy of the target tokens (`Sums`);
  with a `discriminator`, also `dis` and `adv` on the denoising sources (module docstring; `lambdas` then has
  `adv`, and `dis` weighs 1).

  The encoder-decoder runs in ONE `apply` per objective, so encoder and decoder dropout masks are independent
  (derived from their module paths); objectives get distinct dropout keys."""
  adversarial = discriminator is not None

  def sums(params, batch, rng, deterministic: bool):
    out = {}
    nmt = model_params(params)
    for k, key in enumerate(sorted(batch)):
      b = batch[key]
      rngs = {} if deterministic else {"dropout": jax.random.fold_in(rng, k)}
      if key == "bt":
        b = back_translated(nmt, b)
      args = (b["src_tokens"], b["src_positions"], b["src_langs"], b["src_segments"], b["tgt_tokens"],
              b["tgt_positions"], b["tgt_langs"], b["tgt_segments"], b["pred_index"])
      if adversarial and key == "ae":
        logits, states = model.apply({"params": nmt}, *args, deterministic, method=_logits_and_states, rngs=rngs)
        key_d = None if deterministic else jax.random.fold_in(rng, len(batch) + k)
        out.update(adversarial_sums(discriminator, params["discriminator"], states, b["src_langs"],
                                    b["src_segments"] > 0, key_d, deterministic))
      else:
        logits = model.apply({"params": nmt}, *args, deterministic=deterministic, rngs=rngs)
      out[key] = prediction_sums(logits, b["pred_targets"], b["pred_weights"])
    return out

  def weights(batch):
    out = {key: (jnp.sum(b["tokens"][:, 1:] != pad_id).astype(jnp.float32) if key == "bt"
                 else jnp.sum(b["pred_weights"])) for key, b in batch.items()}
    if adversarial and "ae" in batch:
      out["dis"] = out["adv"] = jnp.sum(batch["ae"]["src_segments"] > 0).astype(jnp.float32)
    return out

  def back_translated(params, b):
    """Translate the l1 sentences into l2 with the current model (no gradient, no dropout, greedy, as the
    reference), then return the (l2 synthetic -> l1 original) training example."""
    generated = bt_decode(jax.lax.stop_gradient(params), b["tokens"], b["langs1"], b["langs2"],
                          vocab_mask=vocab_mask)
    src = generated.tokens
    tgt = b["tokens"]
    src_seg = (src != pad_id).astype(jnp.int32)
    tgt_seg = (tgt != pad_id).astype(jnp.int32)
    arange = lambda x: jnp.broadcast_to(jnp.arange(x.shape[1], dtype=jnp.int32), x.shape)
    length = tgt.shape[1]
    return {"src_tokens": src, "src_positions": arange(src), "src_langs": jnp.broadcast_to(b["langs2"][:, None],
                                                                                           src.shape),
            "src_segments": src_seg, "tgt_tokens": tgt, "tgt_positions": arange(tgt),
            "tgt_langs": jnp.broadcast_to(b["langs1"][:, None], tgt.shape), "tgt_segments": tgt_seg,
            "pred_index": jnp.broadcast_to(jnp.arange(length - 1, dtype=jnp.int32), (tgt.shape[0], length - 1)),
            "pred_targets": tgt[:, 1:], "pred_weights": (tgt_seg[:, 1:] > 0).astype(jnp.float32)}

  lambdas = dict(lambdas)
  if adversarial:
    lambdas["dis"] = lambda step: jnp.ones((), jnp.float32)
  return Loss(sums=sums, weights=weights, lambdas=lambdas)


def roundtrip_texts(corpus, specs: list[StepSpec], split: str, n: int) -> dict[tuple[str, str], list[str]]:
  """Monolingual text for round-trip BLEU: per back-translation direction l1-l2-l1, n lines of l1's `split`
  file. The k-th such language (sorted) reads lines [k*n, (k+1)*n), so no two languages ever contribute the same
  line: model selection sees no sentence pair even where the split's files are translations of each other."""
  if n <= 0:
    return {}
  directions = sorted({(s.langs[0], s.langs[1]) for s in specs if s.key == "bt"})
  firsts = sorted({l1 for l1, _ in directions})
  out = {}
  for l1, l2 in directions:
    k = firsts.index(l1)
    lines = [t for t in itertools.islice(corpus.mono(split, l1)(), k * n, (k + 1) * n)]
    if len(lines) < n:
      raise UserError(f"config.nmt.roundtrip_sentences={n}: the {split} text of {l1!r} has only {k * n + len(lines)} "
                      f"lines, {(k + 1) * n} needed ({len(firsts)} languages x {n} disjoint lines); lower it.")
    out[(l1, l2)] = lines
  return out


def roundtrip_bleu(translate: Callable[[list[str], str, str], list[str]],
                   texts: Mapping[tuple[str, str], list[str]]) -> dict[str, float]:
  """Round-trip BLEU (Lample et al. 2018's unsupervised model-selection criterion): l1 text translated into l2
  and back, scored against itself (detokenized sacreBLEU). `roundtrip_bleu_<l1>-<l2>-<l1>` per direction and
  their mean `roundtrip_bleu`. No parallel data is used."""
  out = {}
  for (l1, l2), lines in texts.items():
    back = translate(translate(list(lines), l1, l2), l2, l1)
    out[f"roundtrip_bleu_{l1}-{l2}-{l1}"] = bleu(back, list(lines), l1)["bleu"]
  if out:
    out["roundtrip_bleu"] = float(np.mean(list(out.values())))
  return out


def nmt_flops(enc: TransformerConfig, dec: TransformerConfig):
  def step_flops(batch) -> float:
    total = 0.0
    for key, b in batch.items():
      if key == "bt":
        # the training pass on the back-translated pair only: generation stops as soon as every sentence has
        # ended, so its cost is data-dependent and not counted (MFU stays a lower bound for BT steps)
        rows, s = b["tokens"].shape
        t = s  # generated sources are at most bt_len long (DecodeOptions.max_len)
        total += 3.0 * rows * (t * forward_flops_per_token(enc, t) + s * forward_flops_per_token(dec, s, t)
                               + (s - 1) * 2 * dec.emb_dim * dec.vocab_size)
      else:
        rows, s = b["src_tokens"].shape
        t = b["tgt_tokens"].shape[1]
        total += 3.0 * rows * (s * forward_flops_per_token(enc, s) + t * forward_flops_per_token(dec, t, s)
                               + b["pred_index"].shape[1] * 2 * dec.emb_dim * dec.vocab_size)
    return total
  return step_flops


def nmt_tokens_fn(pad_id: int):
  def nmt_tokens(batch) -> int:
    n = 0
    for key, b in batch.items():
      if key == "bt":
        n += int(np.sum(np.asarray(b["tokens"]) != pad_id)) * 2
      else:
        n += int(np.sum(np.asarray(b["src_segments"]) > 0) + np.sum(np.asarray(b["tgt_segments"]) > 0))
    return n
  return nmt_tokens


def check_shapes(config, enc_cfg: TransformerConfig, dec_cfg: TransformerConfig, mesh) -> None:
  """Lengths within the position tables (past them `jnp.take` reads garbage: silent NaNs) and a batch that splits
  evenly over the devices and micro-batches."""
  for field, table in (("src_len", enc_cfg.max_positions), ("tgt_len", dec_cfg.max_positions),
                       ("bt_len", min(enc_cfg.max_positions, dec_cfg.max_positions))):
    value = int(config.nmt[field])
    if value > table:
      raise UserError(f"config.nmt.{field}={value} exceeds the model's max_positions={table} (its position "
                      f"table); lower config.nmt.{field} to at most {table}.")
  parallel.check_batch(int(config.data.batch_size), mesh, int(config.train.accumulate_gradients))


def make_batches(config, specs: list[StepSpec], para: dict, mono: dict, lang2id: dict, tokenizer,
                 direction_para: dict | None = None) -> tuple[Mixture, list[Entry]]:
  """The NMT mixture (MT and denoising rows packed on both sides, back-translation sources) over the prepared
  stores, and the held-out MT entries (`mt` on the valid split of every MT or BT direction). `direction_para`
  {(src, tgt): prepared pairs}: the training pairs of that MT direction (`config.nmt.direction_corpora`)."""
  direction_para = direction_para or {}
  noise = NoiseConfig(config.nmt.word_shuffle, config.nmt.word_dropout, config.nmt.word_blank, tokenizer.mask_id)
  src_len, tgt_len, bt_len = int(config.nmt.src_len), int(config.nmt.tgt_len), int(config.nmt.bt_len)
  indexes: dict = {}

  def mt_rows(split: str, l1: str, l2: str) -> TranslationRows:
    key = tuple(sorted((l1, l2)))
    own = split == "train" and (l1, l2) in direction_para
    source, index_key = (direction_para[(l1, l2)], (split, key, l1)) if own else (para.get(key), (split, key))
    if index_key not in indexes:
      indexes[index_key] = PairIndex(source.store(split, 0), source.store(split, 1), src_len + tgt_len,
                                     max_side=min(src_len, tgt_len))
    return TranslationRows(src_len=src_len, tgt_len=tgt_len, pad_id=tokenizer.pad_id, src_lang=lang2id[l1],
                           tgt_lang=lang2id[l2], pairs=indexes[index_key], swap=l1 != key[0],
                           pool=config.data.pack_pool)

  entries = []
  for spec in specs:
    lang = spec.langs[0]
    if spec.key == "mt":
      entries.append(Entry(spec, mt_rows("train", *spec.langs)))
    elif spec.key == "ae":
      entries.append(Entry(spec, TranslationRows(src_len=src_len, tgt_len=tgt_len, pad_id=tokenizer.pad_id,
                                                 src_lang=lang2id[lang], tgt_lang=lang2id[lang],
                                                 sentences=mono[lang].store("train"), noise=noise,
                                                 pool=config.data.pack_pool)))
    else:
      entries.append(Entry(spec, BtRows(mono[lang].store("train"), bt_len, tokenizer.pad_id, lang2id[lang],
                                        lang2id[spec.langs[1]], max_tokens=min(bt_len, tgt_len))))
  built = BuiltIn()
  mixture = Mixture(objectives(entries, {"mt": built, "ae": built, "bt": built}, config.data.lg_sampling_factor),
                    batch_size=config.data.batch_size, seed=config.seed, mixing=config.data.mixing,
                    process_index=jax.process_index(), process_count=jax.process_count(),
                    group_rows=config.data.pack_rows,
                    settings={"lens": [src_len, tgt_len, bt_len], "pool": config.data.pack_pool,
                              "noise": dataclasses.asdict(noise), "task": "nmt"})
  directions = sorted({tuple(s.langs[:2]) for s in specs if s.key in ("mt", "bt")})
  valid = [Entry(StepSpec("mt", d), mt_rows("valid", *d)) for d in directions]
  return mixture, valid


def make_discriminator(config, specs: list[StepSpec], n_langs: int) -> LanguageDiscriminator | None:
  """The language discriminator `config.nmt.lambda_dis` asks for (None when it is the constant 0)."""
  text = str(config.nmt.lambda_dis).strip()
  parse_lambda(text, "config.nmt.lambda_dis")  # a clear error for a malformed value
  try:
    if float(text) == 0.0:
      return None
  except ValueError:  # a schedule
    pass
  if not any(s.key == "ae" for s in specs):
    raise UserError(f"config.nmt.lambda_dis={text!r}: the discriminator reads the encoder states of the denoising "
                    "sources, and config.nmt.ae_steps is empty; set ae_steps (e.g. 'en,fr') or lambda_dis='0'.")
  if n_langs < 2:
    raise UserError(f"config.nmt.lambda_dis={text!r} needs at least two languages; the model has {n_langs}.")
  return LanguageDiscriminator(n_langs=n_langs, hidden_dim=int(config.nmt.dis_hidden_dim),
                               n_layers=int(config.nmt.dis_layers), dropout=float(config.nmt.dis_dropout))


def discriminator_meta(discriminator: LanguageDiscriminator | None) -> dict | None:
  if discriminator is None:
    return None
  return {"n_langs": discriminator.n_langs, "hidden_dim": discriminator.hidden_dim,
          "n_layers": discriminator.n_layers, "dropout": discriminator.dropout}


def output_vocab_mask(config, mono: dict, lang2id: dict, dec_cfg: TransformerConfig, tokenizer) -> np.ndarray | None:
  """`config.nmt.output_vocab_min_count` > 0: the words each language may produce (`decode.output_vocab_mask`),
  counted over the monolingual training stores `mono` (languages without one may produce every word)."""
  min_count = int(config.nmt.output_vocab_min_count)
  if min_count <= 0:
    return None
  if not mono:
    raise UserError(f"config.nmt.output_vocab_min_count={min_count} counts words in the monolingual training text "
                    "of the denoising and back-translation languages, and this run has none (ae_steps and bt_steps "
                    "are empty); set it to 0.")
  counts = {lang2id[l]: np.bincount(m.store("train").tokens, minlength=dec_cfg.vocab_size)[:dec_cfg.vocab_size]
            for l, m in mono.items()}
  return decode_lib.output_vocab_mask(counts, dec_cfg.n_langs, dec_cfg.vocab_size, min_count, tokenizer.eos_id)


def _direction_corpora(config, specs: list[StepSpec], workdir: str, languages: list[str]) -> dict:
  """`config.nmt.direction_corpora`: {(src, tgt): corpus of the folder `<src>-<tgt>`} for the MT directions that
  have one (validated here: a folder that names no MT direction is an error, as is an empty one)."""
  folder = str(config.nmt.direction_corpora or "").strip()
  if not folder:
    return {}
  if not paths.exists(folder):
    raise UserError(f"config.nmt.direction_corpora={folder!r} does not exist; give a folder holding one corpus "
                    "folder per MT direction, named <src>-<tgt> (benchmarks/unmt_word_translation.py --write-pseudo "
                    "writes them).")
  directions = [tuple(s.langs[:2]) for s in specs if s.key == "mt"]
  found = {d: paths.join(folder, f"{d[0]}-{d[1]}") for d in directions if paths.exists(paths.join(folder,
                                                                                                 f"{d[0]}-{d[1]}"))}
  if not found:
    raise UserError(f"config.nmt.direction_corpora={folder!r} has no folder for the MT directions "
                    f"{['-'.join(d) for d in directions] or 'of config.nmt.mt_steps (it is empty)'}; name them "
                    "<src>-<tgt> or set config.nmt.mt_steps.")
  out = {}
  for d, path in found.items():
    out[d] = sources_lib.make_corpus(path, workdir=workdir, languages=languages, seed=config.seed,
                                     aligned=config.data.aligned, split_names=config.data.split_names)
    out[d].para("train", *sorted(d))   # fails now, naming the missing file, not in the middle of preparation
  return out


def build_task(config, workdir: str, mesh) -> tuple[TrainTask, dict]:
  """Everything the loop needs; all checks run before anything is written to `workdir`."""
  specs = parse_nmt_steps(config.nmt.mt_steps, config.nmt.ae_steps, config.nmt.bt_steps)
  enc_meta, dec_meta, enc_src, dec_src = load_init_bundles(config)
  if enc_meta is not None and dec_meta is not None:
    check_bundles_agree(enc_meta, dec_meta)
  meta = enc_meta or dec_meta
  languages = list(meta["languages"]) if meta else parse_languages(config.data.languages)
  for spec in specs:
    for lang in spec.langs:
      if lang not in languages:
        raise UserError(f"{spec.key}_steps names language {lang!r}, which the "
                        f"{'pretrained model' if meta else 'config'} does not have (it has {languages}).")
  existing = run_setup.existing_meta(workdir)
  corpus = run_setup.make_corpus(config, workdir, languages)
  direction_corpora = _direction_corpora(config, specs, workdir, languages)
  if config.nmt.unsupervised:
    paired = [f"{a}-{b}" for s in specs if s.key == "mt" for a, b in [s.langs[:2]] if (a, b) not in direction_corpora]
    if paired:
      raise UserError(f"config.nmt.unsupervised=True, yet MT direction(s) {paired} of config.nmt.mt_steps would train "
                      "on the corpus's sentence pairs; give each a folder <src>-<tgt> in config.nmt.direction_corpora "
                      "(e.g. word-by-word text from benchmarks/unmt_word_translation.py --write-pseudo), drop them "
                      "from mt_steps, or set config.nmt.unsupervised=False for supervised MT.")
  pairs = sorted({tuple(sorted(s.langs[:2])) for s in specs if s.key == "mt" and tuple(s.langs[:2]) not in
                  direction_corpora})
  eval_pairs = sorted({tuple(sorted(s.langs[:2])) for s in specs if s.key in ("mt", "bt")})
  mono_langs = sorted({s.langs[0] for s in specs if s.key in ("ae", "bt")})
  for a, b in pairs:
    corpus.para("train", a, b)
  for a, b in eval_pairs:
    for split in ("valid", "test"):
      corpus.para(split, a, b)
  for lang in mono_langs:
    corpus.mono("train", lang)
  if meta is not None:
    tokenizer = tokenizer_from_state(meta["tokenizer"])
  elif existing is not None:
    tokenizer = tokenizer_from_state(existing["tokenizer"])
  else:
    tokenizer = run_setup.get_tokenizer(config, workdir, corpus, languages, None,
                                       run_setup.parse_line_windows(config.data.mono_lines, languages))
  enc_cfg, dec_cfg = model_configs(config, meta, tokenizer.vocab_size, len(languages), tokenizer.pad_id)
  check_shapes(config, enc_cfg, dec_cfg, mesh)
  if existing is not None:
    saved = (existing.get("model"), existing.get("decoder_model"))
    mine = ({k: v for k, v in enc_cfg.to_dict().items()}, {k: v for k, v in dec_cfg.to_dict().items()})
    ignore = ("dropout", "attention_dropout", "dtype", "remat")
    differ = [f"{k}: checkpoint {s[k]!r}, now {m[k]!r}" for s, m in zip(saved, mine) if s
              for k in m if k not in ignore and s.get(k) != m[k]]
    had, has = existing.get("discriminator"), discriminator_meta(make_discriminator(config, specs, len(languages)))
    if had != has:
      differ.append(f"discriminator: checkpoint {had!r}, now {has!r} (config.nmt.lambda_dis and config.nmt.dis_*)")
    if differ or existing.get("task") != "nmt":
      raise UserError(f"workdir {workdir!r} holds a checkpoint of a different model "
                      f"({'; '.join(differ) or 'task ' + repr(existing.get('task'))}); use another --workdir.")
  lang2id = {l: i for i, l in enumerate(languages)}
  cache_dir = paths.data_cache_dir(config.data.cache_dir, workdir)  # local even for a gs:// workdir
  # train pairs only where supervised MT reads them: an unsupervised run needs parallel valid/test text only
  para = {p: run_setup.prepare_para(corpus, *p, tokenizer, cache_dir, config.data.max_len,
                                   splits=(("train",) if p in pairs else ()) + (("valid", "test") if p in eval_pairs
                                                                               else ()))
          for p in sorted(set(pairs) | set(eval_pairs))}
  direction_para = {d: run_setup.prepare_para(c, *d, tokenizer, paths.join(cache_dir, f"direction_{d[0]}-{d[1]}"),
                                              config.data.max_len, splits=("train",))
                    for d, c in direction_corpora.items()}
  windows = run_setup.parse_line_windows(config.data.mono_lines, languages)
  mono = {l: run_setup.prepare_mono(corpus, l, tokenizer, cache_dir, splits=("train",), lines=windows.get(l))
          for l in mono_langs}
  batches, eval_entries = make_batches(config, specs, para, mono, lang2id, tokenizer, direction_para)
  eval_sets = batches.eval_batches(eval_entries, config.data.eval_rows)
  directions = sorted({tuple(s.langs[:2]) for s in specs if s.key in ("mt", "bt")})
  bt_len = int(config.nmt.bt_len)

  model = EncoderDecoder(enc_cfg, dec_cfg)
  bt_options = decode_lib.DecodeOptions(eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, beam_size=1,
                                        max_len_a=config.nmt.bt_max_len_a, max_len_b=config.nmt.bt_max_len_b,
                                        max_len=bt_len)
  bt_decode = decode_lib.make_decoder(enc_cfg.replace(dropout=0.0, attention_dropout=0.0),
                                      dec_cfg.replace(dropout=0.0, attention_dropout=0.0), bt_options)
  vocab_mask = output_vocab_mask(config, mono, lang2id, dec_cfg, tokenizer)
  lambdas = {k: parse_lambda(getattr(config.nmt, f"lambda_{k}"), f"config.nmt.lambda_{k}") for k in ("mt", "ae", "bt")}
  discriminator = make_discriminator(config, specs, len(languages))
  if discriminator is not None:
    lambdas["adv"] = parse_lambda(config.nmt.lambda_dis, "config.nmt.lambda_dis")

  def init(rng):
    params = init_encoder_decoder(enc_cfg, dec_cfg, rng)
    if discriminator is None:
      return params
    return {**params, "discriminator": init_discriminator(discriminator, enc_cfg.emb_dim, jax.random.fold_in(rng, 1))}

  table_path = paths.join(workdir, "init_table.txt")

  def init_from(params):
    placed, table = seed_params(params, enc_src, dec_src, config.init)
    text = run_setup.format_table(table)
    if jax.process_index() == 0:
      print(text.splitlines()[0] + f" (full table: {table_path})", flush=True)
      paths.write_text(table_path, text + "\n")
    return placed

  references = {}
  for l1, l2 in directions:
    split = config.nmt.bleu_split
    texts = list(corpus.para(split, l1, l2)())[:config.nmt.bleu_sentences or None]
    references[(l1, l2)] = texts

  roundtrip = roundtrip_texts(corpus, specs, config.nmt.roundtrip_split, int(config.nmt.roundtrip_sentences))
  # the copy-the-source baseline: BLEU of the untranslated source against the reference
  copy_baseline = {d: bleu([s for s, _ in t], [r for _, r in t], d[1])["bleu"] for d, t in references.items()}

  def translate(params, texts, l1, l2):
    return translate_texts(model_params(params), enc_cfg, dec_cfg, tokenizer, texts, l1, l2, languages,
                           beam_size=config.nmt.beam_size, length_penalty=config.nmt.length_penalty,
                           early_stopping=config.nmt.early_stopping, max_len_a=config.nmt.eval_max_len_a,
                           max_len_b=config.nmt.eval_max_len_b, vocab_mask=vocab_mask)

  def extra_eval(params, step) -> dict:
    results = {}
    for (l1, l2), pairs_text in references.items():
      sources = [s for s, _ in pairs_text]
      hyps = translate(params, sources, l1, l2)
      shown = list(zip(sources, hyps, pairs_text))[:config.nmt.sample_translations]
      if shown:  # TensorBoard text and metrics.jsonl (the loop writes string values as text)
        results[f"samples_{l1}-{l2}"] = "\n\n".join(f"src: {s}  \nhyp: {h}  \nref: {r}" for s, h, (_, r) in shown)
      if jax.process_index() == 0:
        for s, h, (_, r) in shown:
          print(f"  [{l1}->{l2}] {s}\n      hyp: {h}\n      ref: {r}", flush=True)
      scores = bleu(hyps, [r for _, r in pairs_text], l2)
      results[f"bleu_{l1}-{l2}"] = scores["bleu"]
      if "tokenized_bleu" in scores:
        results[f"tokenized_bleu_{l1}-{l2}"] = scores["tokenized_bleu"]
      # diagnostics: how much the output copies its input, against what copying the source would score
      results[f"copy_bleu_{l1}-{l2}"] = bleu(hyps, sources, l2)["bleu"]
      results[f"source_bleu_{l1}-{l2}"] = copy_baseline[(l1, l2)]
    if roundtrip:
      results.update(roundtrip_bleu(lambda texts, a, b: translate(params, texts, a, b), roundtrip))
    return results

  signature = bleu(["a"], ["a"], "en")["signature"]
  meta_out = {"format": ckpt.BUNDLE_FORMAT, "task": "nmt", "architecture": "encoder_decoder",
              "model": enc_cfg.to_dict(), "decoder_model": dec_cfg.to_dict(), "languages": languages,
              "tokenizer": tokenizer.state(), "bleu_signature": signature, "bleu_split": config.nmt.bleu_split,
              "config": json.loads(json.dumps(config.to_dict(), default=str)),
              "discriminator": discriminator_meta(discriminator)}
  task = TrainTask(name="nmt", init_params=init,
                   loss=make_loss(model, lambdas, bt_decode, tokenizer.pad_id, discriminator, vocab_mask),
                   batches=batches, eval_sets=eval_sets, meta=meta_out, step_flops=nmt_flops(enc_cfg, dec_cfg),
                   step_tokens=nmt_tokens_fn(tokenizer.pad_id), compute_dtype=enc_cfg.dtype, extra_eval=extra_eval,
                   init_from=init_from)
  context = {"tokenizer": tokenizer, "languages": languages, "encoder_config": enc_cfg, "decoder_config": dec_cfg,
             "references": references, "vocab_mask": vocab_mask}
  return task, context


def run(config, workdir: str, devices=None):
  """Train the NMT model as `config` says, in `workdir` (resuming when it holds a checkpoint)."""
  mesh = parallel.make_mesh(config.mesh.to_dict(), devices)
  task, _ = build_task(config, workdir, mesh)
  return train(task, config, workdir, mesh)
