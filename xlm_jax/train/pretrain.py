"""Cross-lingual LM pretraining (MLM / CLM; TLM with parallel data): orchestration only.

Builds the tokenizer, prepared data, batches, model and loss from a config, checks a resumed workdir against
the config *before writing anything*, and hands a `TrainTask` to the shared loop.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xlm_jax import checkpoint as ckpt
from xlm_jax import parallel
from xlm_jax.config_base import parse_list
from xlm_jax.data import sources as sources_lib
from xlm_jax.data.masking import MaskingConfig
from xlm_jax.data.pipeline import PretrainBatches, StepSpec, parse_steps
from xlm_jax.data.prepare import prepare
from xlm_jax.data.streams import TokenStream
from xlm_jax.errors import UserError
from xlm_jax.io_utils import atomic_write
from xlm_jax.model import Transformer, TransformerConfig, forward_flops_per_token, init_params
from xlm_jax.tokenizer import (SentencePieceTokenizer, Tokenizer, tokenizer_from_state, train_sentencepiece)
from xlm_jax.train.loop import TrainTask, train
from xlm_jax.train.optim import parse_lambda

N_SPECIAL = 6  # <s> </s> <pad> <unk> <special0> <mask>: never random replacements


def model_config(config, vocab_size: int, n_langs: int, pad_id: int) -> TransformerConfig:
  """The model of a run: `config.model` plus what the data decides (vocabulary, languages, pad id)."""
  return TransformerConfig(vocab_size=vocab_size, n_langs=n_langs, pad_id=pad_id, **config.model.to_dict())


def bundle_meta(config, cfg: TransformerConfig, languages: list[str], tokenizer: Tokenizer, task: str) -> dict:
  return {"format": ckpt.BUNDLE_FORMAT, "task": task, "architecture": "encoder", "model": cfg.to_dict(),
          "languages": list(languages), "tokenizer": tokenizer.state(),
          "config": json.loads(json.dumps(config.to_dict(), default=str))}


def existing_meta(workdir: str) -> dict | None:
  root = os.path.join(workdir, "checkpoints")
  if ckpt.all_steps(root):
    return ckpt.read_meta(workdir)
  return None


def check_resume(meta: Mapping, config, languages: list[str], workdir: str) -> None:
  """Refuse to resume a workdir whose checkpoint holds a different model or language set."""
  saved = TransformerConfig.from_dict(meta["model"])
  wanted = model_config(config, saved.vocab_size, len(languages), saved.pad_id)
  differ = [f"{k}: checkpoint {v!r}, config {getattr(wanted, k)!r}" for k, v in saved.to_dict().items()
            if getattr(wanted, k) != v and k not in ("dropout", "attention_dropout", "dtype", "remat")]
  if list(meta.get("languages", [])) != list(languages):
    differ.append(f"languages: checkpoint {meta.get('languages')}, config {languages}")
  if differ:
    raise UserError(f"workdir {workdir!r} holds a checkpoint of a different model ({'; '.join(differ)}); use "
                    "another --workdir, or the checkpoint's settings.")


def mono_source(config, workdir: str, languages: list[str]):
  if config.data.corpus == "generated":
    return sources_lib.generated_corpus(workdir, languages, config.seed, dict(config.data.generated_sizes))
  if not config.data.corpus:
    raise UserError("config.data.corpus is empty; set it to 'generated' or to a folder of {split}.{lang} files.")
  return sources_lib.LocalFolder(os.path.abspath(os.path.expanduser(config.data.corpus)))


def get_tokenizer(config, workdir: str, source, languages: list[str], meta: Mapping | None) -> Tokenizer:
  """The checkpoint's tokenizer when resuming; else the workdir's; else train one (and keep it in the workdir)."""
  if meta is not None:
    return tokenizer_from_state(meta["tokenizer"])
  path = os.path.join(workdir, "tokenizer.json")
  if os.path.exists(path):
    with open(path) as f:
      tok = tokenizer_from_state(json.load(f))
    if sorted(getattr(tok, "languages", languages)) == sorted(languages):
      return tok
  files = {lang: [source.check_mono("train", lang)] for lang in languages}
  tok = train_sentencepiece(files, config.data.vocab_size, alpha=config.data.tokenizer_alpha,
                            n_sentences=config.data.tokenizer_sentences, seed=config.seed)
  with atomic_write(path) as f:
    json.dump(tok.state(), f)
  return tok


def prepare_mono(source, lang: str, tokenizer: Tokenizer, cache_dir: str, splits=("train", "valid")):
  paths = {split: source.check_mono(split, lang) for split in splits}
  from xlm_jax.io_utils import read_lines
  return prepare(f"mono.{lang}", cache_dir, {s: (lambda p=p: read_lines(p)) for s, p in paths.items()}, n_fields=1,
                 encode=lambda t: tokenizer.encode(t, lang), unk_id=tokenizer.unk_id,
                 fingerprint={"files": sources_lib.file_fingerprint(list(paths.values())),
                              "tokenizer": tokenizer.fingerprint(), "lang": lang},
                 describe=f"language {lang!r} ({', '.join(paths.values())})")


def masking_config(config, tokenizer: Tokenizer) -> MaskingConfig:
  try:
    probs = tuple(float(x) for x in str(config.data.word_mask_keep_rand).split(","))
  except ValueError:
    probs = ()
  if len(probs) != 3:
    raise UserError(f"config.data.word_mask_keep_rand={config.data.word_mask_keep_rand!r} must be three numbers "
                    "like '0.8,0.1,0.1'.")
  return MaskingConfig(vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id, n_special=N_SPECIAL,
                       word_pred=config.data.word_pred, mask_keep_rand=probs, sample_alpha=config.data.sample_alpha)


def make_loss(model: Transformer, lambdas: Mapping[str, Any]):
  """Sum over the objectives in the batch of weight * mean cross-entropy at the prediction slots."""

  def loss(params, batch, rng, step, deterministic: bool):
    total = jnp.zeros((), jnp.float32)
    stats = {}
    for k, objective in enumerate(sorted(batch)):
      b = batch[objective]
      rngs = {} if deterministic else {"dropout": jax.random.fold_in(rng, k)}
      logits = model.apply({"params": params}, b["tokens"], b["positions"], b["langs"], b["segment_ids"],
                           b["pred_index"], causal=objective == "clm", deterministic=deterministic, rngs=rngs,
                           method=lambda m, t, p, l, s, i, **kw: m.predict_at(m.encode(t, p, l, s, **kw), i))
      weights = b["pred_weights"]
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, b["pred_targets"])
      loss_sum = jnp.sum(ce * weights)
      count = jnp.sum(weights)
      correct = jnp.sum((jnp.argmax(logits, -1) == b["pred_targets"]) * weights)
      total = total + lambdas[objective](step) * loss_sum / jnp.maximum(count, 1.0)
      stats.update({f"{objective}_loss_sum": loss_sum, f"{objective}_count": count,
                    f"{objective}_correct": correct,
                    f"tokens_{objective}": jnp.sum(b["segment_ids"] > 0).astype(jnp.float32)})
    return total, stats

  return loss


def step_flops_fn(cfg: TransformerConfig):
  def step_flops(batch) -> float:
    total = 0.0
    for b in batch.values():
      rows, length = b["tokens"].shape
      slots = b["pred_index"].shape[1]
      total += 3.0 * (rows * length * forward_flops_per_token(cfg, length) + rows * slots * 2 * cfg.emb_dim
                      * cfg.vocab_size)
    return total
  return step_flops


def step_tokens(batch) -> int:
  return int(sum(int(np.sum(np.asarray(b["segment_ids"]) > 0)) for b in batch.values()))


def build_task(config, workdir: str, mesh) -> tuple[TrainTask, dict]:
  """Everything the loop needs, with every check done before anything is written to `workdir`."""
  languages = sorted(parse_list(config.data.languages))
  if not languages:
    raise UserError("config.data.languages is empty; name at least one language, e.g. 'en,fr'.")
  specs: list[StepSpec] = parse_steps(config.data.mlm_steps, "mlm") + parse_steps(config.data.clm_steps, "clm")
  for spec in specs:
    for lang in spec.langs:
      if lang not in languages:
        raise UserError(f"{spec.objective}_steps names language {lang!r}, which is not in config.data.languages "
                        f"{languages}.")
  meta = existing_meta(workdir)
  if meta is not None:
    check_resume(meta, config, languages, workdir)
  source = mono_source(config, workdir, languages)
  for lang in languages:
    for split in ("train", "valid"):
      source.check_mono(split, lang)
  tokenizer = get_tokenizer(config, workdir, source, languages, meta)
  cache_dir = config.data.cache_dir or os.path.join(workdir, "data")
  prepared = {lang: prepare_mono(source, lang, tokenizer, cache_dir) for lang in languages}
  bptt = int(config.data.bptt)
  if bptt > config.model.max_positions:
    raise UserError(f"config.data.bptt={bptt} exceeds config.model.max_positions={config.model.max_positions}.")
  train_streams = {l: TokenStream(p, "train", bptt, tokenizer.eos_id) for l, p in prepared.items()}
  valid_streams = {l: TokenStream(p, "valid", bptt, tokenizer.eos_id) for l, p in prepared.items()}
  sizes = {l: p.manifest["splits"]["train"]["sentences"] for l, p in prepared.items()}
  lang2id = {l: i for i, l in enumerate(languages)}
  divisor = parallel.batch_divisor(mesh) * int(config.train.accumulate_gradients)
  if config.data.batch_size % divisor:
    raise UserError(f"config.data.batch_size={config.data.batch_size} must be a multiple of {divisor} (devices on "
                    "the data and fsdp mesh axes times accumulate_gradients).")
  batches = PretrainBatches(streams=train_streams, sizes=sizes, lang2id=lang2id, specs=specs,
                            batch_size=config.data.batch_size, seq_len=bptt,
                            masking=masking_config(config, tokenizer), seed=config.seed, mixing=config.data.mixing,
                            lg_sampling_factor=config.data.lg_sampling_factor,
                            process_index=jax.process_index(), process_count=jax.process_count())
  eval_sets = {name: [{name.split("_")[0]: b} for b in bs]
               for name, bs in batches.eval_batches(valid_streams, config.data.eval_rows).items()}
  cfg = model_config(config, tokenizer.vocab_size, len(languages), tokenizer.pad_id)
  model = Transformer(cfg)
  lambdas = {o: parse_lambda(getattr(config.data, f"lambda_{o}"), f"config.data.lambda_{o}") for o in ("mlm", "clm")}
  task = TrainTask(name="pretrain", init_params=lambda rng: init_params(cfg, rng), loss=make_loss(model, lambdas),
                   batches=batches, eval_sets=eval_sets,
                   meta=bundle_meta(config, cfg, languages, tokenizer, "pretrain"),
                   step_flops=step_flops_fn(cfg), step_tokens=step_tokens, compute_dtype=cfg.dtype)
  context = {"tokenizer": tokenizer, "languages": languages, "model_config": cfg, "prepared": prepared}
  return task, context


def run(config, workdir: str, devices=None):
  """Pretrain as `config` says, in `workdir` (resuming when it holds a checkpoint). Returns a `TrainResult`."""
  mesh = parallel.make_mesh(config.mesh.to_dict(), devices)
  task, _ = build_task(config, workdir, mesh)
  return train(task, config, workdir, mesh)
