"""Cross-lingual LM pretraining (MLM / CLM; TLM with parallel data): orchestration only.

Builds the batches, model and loss from a config (the corpus, tokenizer, prepared data and resume checks come from
`xlm_jax.run_setup`, shared with the other tasks), checks a resumed workdir against the config *before writing
anything*, and hands a `TrainTask` to the shared loop.
"""
from __future__ import annotations

import itertools
import json
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from xlm_jax import checkpoint as ckpt
from xlm_jax import parallel, paths
from xlm_jax.config_base import parse_languages
from xlm_jax.data.masking import MaskingConfig, frequency_scores
from xlm_jax.data.mixture import Entry, Mixture, NextTokenTargets, StepSpec, mlm_targets, objectives, parse_steps
from xlm_jax.data.prepare import PreparedText
from xlm_jax.data.rows import PairIndex, StreamRows, TlmRows
from xlm_jax.errors import UserError
from xlm_jax.model import Transformer, TransformerConfig, init_params, train_flops
# the shared run set-up (re-exported: callers that import these from here keep working)
from xlm_jax.run_setup import (check_resume, existing_meta, get_tokenizer, line_window, load_tokenizer,  # noqa: F401
                               make_corpus, model_config, parse_line_windows, prepare_mono, prepare_para)
from xlm_jax.samples import fill_in_samples
from xlm_jax.tokenizer import Tokenizer
from xlm_jax.train.loop import Loss, TrainTask, prediction_sums, train
from xlm_jax.train.optim import parse_lambda

N_SPECIAL = 6  # <s> </s> <pad> <unk> <special0> <mask>


def special_ids(tokenizer: Tokenizer) -> tuple[int, ...]:
  """Ids that are never a random MLM replacement (nor masked when sampling by frequency): the XLM specials and
  the tokenizer's language tags (control tokens no text produces)."""
  tags = [tokenizer.lang_tag_id(l) for l in getattr(tokenizer, "languages", ())] \
      if hasattr(tokenizer, "lang_tag_id") else []
  return tuple(sorted({*range(N_SPECIAL), *tags}))


def bundle_meta(config, cfg: TransformerConfig, languages: list[str], tokenizer: Tokenizer, task: str) -> dict:
  return {"format": ckpt.BUNDLE_FORMAT, "task": task, "architecture": "encoder", "model": cfg.to_dict(),
          "languages": list(languages), "tokenizer": tokenizer.state(),
          "config": json.loads(json.dumps(config.to_dict(), default=str))}


def masking_config(config, tokenizer: Tokenizer) -> MaskingConfig:
  try:
    probs = tuple(float(x) for x in str(config.data.word_mask_keep_rand).split(","))
  except ValueError:
    probs = ()
  if len(probs) != 3:
    raise UserError(f"config.data.word_mask_keep_rand={config.data.word_mask_keep_rand!r} must be three numbers "
                    "like '0.8,0.1,0.1'.")
  return MaskingConfig(vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id, special_ids=special_ids(tokenizer),
                       word_pred=config.data.word_pred, mask_keep_rand=probs, sample_alpha=config.data.sample_alpha)


def masking_scores(masking: MaskingConfig, prepared: list[PreparedText]) -> np.ndarray | None:
  """Per-token masking weights count**-sample_alpha from the training data of the step specs (the reference
  takes the counts of its vocabulary file, i.e. of the training data); None when sample_alpha == 0 (uniform)."""
  if masking.sample_alpha <= 0:
    return None
  counts = sum(data.token_counts("train", masking.vocab_size) for data in prepared)
  return frequency_scores(np.asarray(counts), masking.sample_alpha, masking.special_ids)


def make_loss(model: Transformer, lambdas: Mapping[str, Any]) -> Loss:
  """MLM / TLM / CLM: per objective, the summed cross-entropy at the prediction slots (`Sums`); the loop weighs
  them by `lambdas` and normalises by the batch's slot count."""

  def sums(params, batch, rng, deterministic: bool):
    out = {}
    for k, objective in enumerate(sorted(batch)):
      b = batch[objective]
      rngs = {} if deterministic else {"dropout": jax.random.fold_in(rng, k)}
      logits = model.apply({"params": params}, b["tokens"], b["positions"], b["langs"], b["segment_ids"],
                           b["pred_index"], causal=objective == "clm", deterministic=deterministic, rngs=rngs,
                           method=lambda m, t, p, l, s, i, **kw: m.predict(m.encode(t, p, l, s, rows=i, **kw)))
      out[objective] = prediction_sums(logits, b["pred_targets"], b["pred_weights"])
    return out

  weights = lambda batch: {objective: jnp.sum(b["pred_weights"]) for objective, b in batch.items()}
  return Loss(sums=sums, weights=weights, lambdas=dict(lambdas))


def step_flops_fn(cfg: TransformerConfig):
  def step_flops(batch) -> float:
    total = 0.0
    for b in batch.values():
      rows, length = b["tokens"].shape
      slots = b["pred_index"].shape[1]
      total += train_flops(cfg, rows * length, length, rows * slots)
    return total
  return step_flops


def step_tokens(batch) -> int:
  return int(sum(int(np.sum(np.asarray(b["segment_ids"]) > 0)) for b in batch.values()))


def data_report(prepared: list[PreparedText], pair_stores: Mapping[tuple[str, str, str], PairIndex],
                bptt: int) -> list[str]:
  """One line per dataset split that lost text: lines dropped at preparation (empty, longer than max_len) and
  pairs skipped because their TLM example does not fit a row of `bptt` tokens. Empty when nothing was lost."""
  lines = []
  for data in prepared:
    for split, s in sorted(data.manifest["splits"].items()):
      reasons = {"empty": "empty", "too_long": f"longer than max_len={data.manifest['max_len']} tokens"}
      dropped = [f"{n} {reasons.get(why, why)}" for why, n in s["dropped"].items() if n]
      if dropped:
        lines.append(f"data: {data.manifest.get('describe') or data.manifest['name']}, {split}: kept "
                     f"{s['sentences']} of {s['lines']} lines; dropped {' and '.join(dropped)}.")
  for (a, b, split), store in sorted(pair_stores.items()):
    if store.n_too_long:
      lines.append(f"data: pairs {a}-{b}, {split}: {store.n_too_long} of {store.n_too_long + len(store)} pairs do "
                   f"not fit a row of bptt={bptt} tokens (both sentences framed) and are skipped.")
  return lines


def make_entries(specs: list[StepSpec], split: str, *, mono: Mapping[str, PreparedText],
                 para: Mapping[tuple[str, str], PreparedText], lang2id: Mapping[str, int], bptt: int,
                 tokenizer: Tokenizer, pack_pool: float, pair_stores: dict | None = None) -> list[Entry]:
  """The row builder of each step spec on `split`: stream rows (monolingual) or packed pairs (one pair index per
  pair, shared by both directions), over the memory-mapped stores. `pair_stores`, when given, receives the pair
  indexes by (l1, l2, split), for reporting."""
  out, pairs = [], {}
  for spec in specs:
    if len(spec.langs) == 1:
      lang = spec.langs[0]
      out.append(Entry(spec, StreamRows(mono[lang].store(split), bptt, lang2id[lang])))
    else:
      l1, l2 = spec.langs
      key = tuple(sorted(spec.langs))
      if key not in pairs:
        pairs[key] = PairIndex(para[key].store(split, 0), para[key].store(split, 1), bptt)
        if pair_stores is not None:
          pair_stores[(*key, split)] = pairs[key]
      out.append(Entry(spec, TlmRows(pairs[key], swap=(l1 != key[0]), lang1=lang2id[l1], lang2=lang2id[l2],
                                     length=bptt, pad_id=tokenizer.pad_id, pool=pack_pool)))
  return out


def make_batches(config, entries: list[Entry], masking: MaskingConfig, token_scores: np.ndarray | None) -> Mixture:
  """The pretraining mixture: MLM/TLM rows masked, CLM rows with next-token targets; this process's groups."""
  bptt = int(config.data.bptt)
  mlm = mlm_targets(masking, bptt, token_scores)
  return Mixture(objectives(entries, {"mlm": mlm, "tlm": mlm, "clm": NextTokenTargets()},
                            config.data.lg_sampling_factor),
                 batch_size=config.data.batch_size, seed=config.seed, mixing=config.data.mixing,
                 process_index=jax.process_index(), process_count=jax.process_count(),
                 group_rows=config.data.pack_rows,
                 settings={"bptt": bptt, "pool": config.data.pack_pool, "task": "pretrain"})


def build_task(config, workdir: str, mesh, corpus=None) -> tuple[TrainTask, dict]:
  """Everything the loop needs, with every check done before anything is written to `workdir`.

  `corpus` replaces the sources named by `config.data.corpus` (tests pass TFDS sources opened under
  `tfds.testing.mock_data`)."""
  languages = parse_languages(config.data.languages)
  if not languages:
    raise UserError("config.data.languages is empty; name at least one language, e.g. 'en,fr'.")
  specs: list[StepSpec] = parse_steps(config.data.mlm_steps, "mlm") + parse_steps(config.data.clm_steps, "clm")
  for spec in specs:
    for lang in spec.langs:
      if lang not in languages:
        raise UserError(f"{spec.objective}_steps names language {lang!r}, which is not in config.data.languages "
                        f"{languages}; add it there or remove it from config.data.{spec.objective}_steps.")
  windows = parse_line_windows(config.data.mono_lines, languages)
  meta = existing_meta(workdir)
  if meta is not None:
    check_resume(meta, config, languages, workdir)
  bptt = int(config.data.bptt)
  if bptt > config.model.max_positions:
    raise UserError(f"config.data.bptt={bptt} exceeds config.model.max_positions={config.model.max_positions}.")
  parallel.check_batch(int(config.data.batch_size), mesh, int(config.train.accumulate_gradients))
  corpus = corpus or make_corpus(config, workdir, languages)
  mono_langs = sorted({s.langs[0] for s in specs if len(s.langs) == 1})
  pairs = sorted({tuple(sorted(s.langs)) for s in specs if len(s.langs) == 2})
  for split in ("train", "valid"):  # fail on missing or empty data before anything is written
    for lang in languages:
      corpus.mono(split, lang)
    for a, b in pairs:
      corpus.para(split, a, b)
  tokenizer = get_tokenizer(config, workdir, corpus, languages, meta, windows)
  masking = masking_config(config, tokenizer)
  cache_dir = paths.data_cache_dir(config.data.cache_dir, workdir)  # local even for a gs:// workdir
  lang2id = {l: i for i, l in enumerate(languages)}
  # pairs first: their alignment check (a full pass over both files) fails before the monolingual data is prepared
  workers = int(config.data.prepare_workers)
  para = {p: prepare_para(corpus, *p, tokenizer, cache_dir, config.data.max_len, workers=workers) for p in pairs}
  mono = {l: prepare_mono(corpus, l, tokenizer, cache_dir, lines=windows.get(l), workers=workers) for l in mono_langs}
  pair_stores: dict[tuple[str, str, str], PairIndex] = {}

  def entries(split: str) -> list[Entry]:
    return make_entries(specs, split, mono=mono, para=para, lang2id=lang2id, bptt=bptt, tokenizer=tokenizer,
                        pack_pool=config.data.pack_pool, pair_stores=pair_stores)

  batches = make_batches(config, entries("train"), masking,
                         masking_scores(masking, [*mono.values(), *para.values()]))
  eval_sets = batches.eval_batches(entries("valid"), config.data.eval_rows)
  report = data_report([*para.values(), *mono.values()], pair_stores, bptt)
  if report and jax.process_index() == 0:
    print("\n".join(report), flush=True)
  cfg = model_config(config, tokenizer.vocab_size, len(languages), tokenizer.pad_id)
  model = Transformer(cfg)
  lambdas = {o: parse_lambda(getattr(config.data, f"lambda_{o}"), f"config.data.lambda_{o}") for o in ("mlm", "clm")}
  lambdas["tlm"] = lambdas["mlm"]  # as in the reference, TLM is MLM on pairs and shares its weight
  meta = bundle_meta(config, cfg, languages, tokenizer, "pretrain")
  held_out = {l: list(itertools.islice(corpus.mono("valid", l)(), 2)) for l in mono_langs}
  task = TrainTask(name="pretrain", init_params=lambda rng: init_params(cfg, rng), loss=make_loss(model, lambdas),
                   batches=batches, eval_sets=eval_sets, meta=meta, step_flops=step_flops_fn(cfg),
                   step_tokens=step_tokens, compute_dtype=cfg.dtype, extra_eval=fill_in_samples(meta, held_out))
  context = {"tokenizer": tokenizer, "languages": languages, "model_config": cfg, "mono": mono, "para": para,
             "corpus": corpus, "lang2id": lang2id, "masking": masking, "data_report": report, "specs": specs}
  return task, context


def run(config, workdir: str, devices=None, corpus=None):
  """Pretrain as `config` says, in `workdir` (resuming when it holds a checkpoint). Returns a `TrainResult`."""
  mesh = parallel.make_mesh(config.mesh.to_dict(), devices)
  task, _ = build_task(config, workdir, mesh, corpus)
  return train(task, config, workdir, mesh)
