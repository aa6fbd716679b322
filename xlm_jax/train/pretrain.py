"""Cross-lingual LM pretraining (MLM / CLM; TLM with parallel data): orchestration only.

Builds the tokenizer, prepared data, batches, model and loss from a config, checks a resumed workdir against
the config *before writing anything*, and hands a `TrainTask` to the shared loop.
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
from xlm_jax.data import sources as sources_lib
from xlm_jax.data.masking import MaskingConfig, frequency_scores
from xlm_jax.data.mixture import Entry, Mixture, NextTokenTargets, StepSpec, mlm_targets, objectives, parse_steps
from xlm_jax.data.prepare import PreparedText, prepare
from xlm_jax.data.rows import PairIndex, StreamRows, TlmRows
from xlm_jax.errors import UserError
from xlm_jax.model import Transformer, TransformerConfig, forward_flops_per_token, init_params
from xlm_jax.samples import fill_in_samples
from xlm_jax.tokenizer import Tokenizer, tokenizer_from_state, train_sentencepiece
from xlm_jax.train.loop import Loss, TrainTask, prediction_sums, train
from xlm_jax.train.optim import parse_lambda

N_SPECIAL = 6  # <s> </s> <pad> <unk> <special0> <mask>


def special_ids(tokenizer: Tokenizer) -> tuple[int, ...]:
  """Ids that are never a random MLM replacement (nor masked when sampling by frequency): the XLM specials and
  the tokenizer's language tags (control tokens no text produces)."""
  tags = [tokenizer.lang_tag_id(l) for l in getattr(tokenizer, "languages", ())] \
      if hasattr(tokenizer, "lang_tag_id") else []
  return tuple(sorted({*range(N_SPECIAL), *tags}))


def model_config(config, vocab_size: int, n_langs: int, pad_id: int) -> TransformerConfig:
  """The model of a run: `config.model` plus what the data decides (vocabulary, languages, pad id)."""
  fields = {k: v for k, v in config.model.to_dict().items() if k != "decoder_layers"}
  return TransformerConfig(vocab_size=vocab_size, n_langs=n_langs, pad_id=pad_id, **fields)


def bundle_meta(config, cfg: TransformerConfig, languages: list[str], tokenizer: Tokenizer, task: str) -> dict:
  return {"format": ckpt.BUNDLE_FORMAT, "task": task, "architecture": "encoder", "model": cfg.to_dict(),
          "languages": list(languages), "tokenizer": tokenizer.state(),
          "config": json.loads(json.dumps(config.to_dict(), default=str))}


def existing_meta(workdir: str) -> dict | None:
  root = paths.join(workdir, "checkpoints")
  if ckpt.all_steps(root):
    return ckpt.read_meta(workdir)
  return None


def check_resume(meta: Mapping, config, languages: list[str], workdir: str) -> None:
  """Refuse to resume a workdir whose checkpoint holds a different model or language set."""
  saved = TransformerConfig.from_dict(meta["model"])
  wanted = model_config(config, saved.vocab_size, len(languages), saved.pad_id)
  differ = [f"{k}: checkpoint {v!r}, config {getattr(wanted, k)!r}" for k, v in saved.to_dict().items()
            if getattr(wanted, k) != v and k not in ("dropout", "attention_dropout", "dtype", "remat", "scan_layers")]
  if list(meta.get("languages", [])) != list(languages):
    differ.append(f"languages: checkpoint {meta.get('languages')}, config {languages}")
  if differ:
    raise UserError(f"workdir {workdir!r} holds a checkpoint of a different model ({'; '.join(differ)}); use "
                    "another --workdir, or the checkpoint's settings.")


def make_corpus(config, workdir: str, languages: list[str]):
  return sources_lib.make_corpus(config.data.corpus, workdir=workdir, languages=languages, seed=config.seed,
                                 generated_sizes=dict(config.data.generated_sizes), aligned=config.data.aligned,
                                 split_names=config.data.split_names, tfds_data_dir=config.data.tfds_data_dir)


def parse_line_windows(text: str, languages: list[str]) -> dict[str, tuple[int, int]]:
  """`config.data.mono_lines`: 'cs:2000' (the first 2,000 lines) or 'en:0:14500,fr:14500:29000' (line ranges)
  -> {lang: (first, end)}: which training lines of a language's monolingual text are used."""
  windows = {}
  for item in (x.strip() for x in (text or "").split(",") if x.strip()):
    parts = item.split(":")
    numbers = parts[1:]
    if parts[0] not in languages or len(numbers) not in (1, 2) or not all(n.isdigit() for n in numbers):
      raise UserError(f"config.data.mono_lines entry {item!r} must be '<language>:<count>' or "
                      f"'<language>:<first>:<end>' with a language of {languages}.")
    first, end = (0, int(numbers[0])) if len(numbers) == 1 else (int(numbers[0]), int(numbers[1]))
    if end <= first:
      raise UserError(f"config.data.mono_lines entry {item!r}: the range is empty.")
    windows[parts[0]] = (first, end)
  return windows


def line_window(texts, window: tuple[int, int] | None):
  """Only lines first..end-1 of a text source (all lines without a window)."""
  if window is None:
    return texts
  return lambda: itertools.islice(texts(), window[0], window[1])


def load_tokenizer(path: str) -> Tokenizer:
  """A tokenizer.json file, or the tokenizer of a bundle (workdir or checkpoint step).

  Raises a `UserError` naming `config.data.tokenizer` when the path does not exist or the file is not a saved
  tokenizer state."""
  path = paths.resolve(path)
  if not paths.exists(path):
    raise UserError(f"config.data.tokenizer={path!r} does not exist; point it at a tokenizer.json, a workdir or a "
                    "checkpoint, or leave it empty to train a tokenizer.")
  if paths.isfile(path):
    try:
      state = json.loads(paths.read_text(path))
      if not isinstance(state, dict):
        raise ValueError("not a JSON object")
      return tokenizer_from_state(state)
    except (ValueError, KeyError, RuntimeError) as e:  # bad JSON, missing field, bad model bytes
      raise UserError(f"config.data.tokenizer={path!r} is not a saved xlm_jax tokenizer ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}); use the tokenizer.json of a workdir.") from None
  if paths.isfile(paths.join(path, "tokenizer.json")) and not paths.isdir(paths.join(path, "checkpoints")):
    return load_tokenizer(paths.join(path, "tokenizer.json"))
  return tokenizer_from_state(ckpt.read_meta(path)["tokenizer"])


def get_tokenizer(config, workdir: str, corpus, languages: list[str], meta: Mapping | None,
                  windows: Mapping[str, tuple[int, int]]) -> Tokenizer:
  """The checkpoint's tokenizer when resuming; else `config.data.tokenizer`; else the workdir's; else train one
  on the training text (language-balanced) and keep it in the workdir."""
  origin = "the tokenizer of this workdir's checkpoint"
  if meta is not None:
    tok = tokenizer_from_state(meta["tokenizer"])
  elif config.data.tokenizer:
    tok = load_tokenizer(config.data.tokenizer)
    origin = f"the tokenizer {config.data.tokenizer!r} (config.data.tokenizer)"
  else:
    origin = "the workdir's tokenizer.json"
    path = paths.join(workdir, "tokenizer.json")

    def train_or_read() -> Tokenizer:
      if paths.exists(path):
        found = tokenizer_from_state(json.loads(paths.read_text(path)))
        langs = sorted(getattr(found, "languages", ()) or ())
        if found.vocab_size != config.data.vocab_size or langs != sorted(languages):
          raise UserError(f"{path} is another run's tokenizer (vocab_size {found.vocab_size}, languages {langs}); "
                          f"this config asks for vocab_size {config.data.vocab_size}, languages {sorted(languages)}: "
                          "delete that file (a new one is trained) or use another --workdir.")
        return found
      texts = {lang: line_window(corpus.mono("train", lang), windows.get(lang)) for lang in languages}
      trained = train_sentencepiece(texts, config.data.vocab_size, alpha=config.data.tokenizer_alpha,
                                    n_sentences=config.data.tokenizer_sentences, seed=config.seed)
      paths.write_text(path, json.dumps(trained.state()))
      return trained

    tok = parallel.process_zero_first(train_or_read, "tokenizer")
  known = getattr(tok, "languages", None)
  if known:
    missing = [l for l in languages if l not in known]
    if missing:
      raise UserError(f"{origin} was trained for {list(known)} and lacks language(s) {missing}; train a new one "
                      "(leave config.data.tokenizer empty, in a new workdir) or drop those languages.")
  return tok


def prepare_mono(corpus, lang: str, tokenizer: Tokenizer, cache_dir: str, splits=("train", "valid"),
                 lines: tuple[int, int] | None = None, workers: int = 1):
  """Tokenise (once) the monolingual text of `lang`; `lines` keeps only that range of the training lines."""
  texts = {split: corpus.mono(split, lang) for split in splits}
  texts["train"] = line_window(texts["train"], lines)
  fingerprint = {"text": {s: corpus.mono_fingerprint(s, lang) for s in splits}, "tokenizer": tokenizer.fingerprint(),
                 "lang": lang, "lines": list(lines) if lines else None}
  files = [f for s in splits for f in corpus.mono_files(s, lang)]
  return parallel.process_zero_first(
      lambda: prepare(f"mono.{lang}", cache_dir, texts, n_fields=1, encode=lambda t: tokenizer.encode(t, lang),
                      unk_id=tokenizer.unk_id, eos_id=tokenizer.eos_id, fingerprint=fingerprint,
                      describe=f"language {lang!r}", input_files=files, workers=workers),
      f"prepare-mono-{lang}")


def prepare_para(corpus, l1: str, l2: str, tokenizer: Tokenizer, cache_dir: str, max_len: int,
                 splits=("train", "valid"), workers: int = 1):
  """Tokenise (once) the aligned pairs of l1-l2 (stored with l1 < l2)."""
  a, b = sorted((l1, l2))
  texts = {split: corpus.para(split, a, b) for split in splits}
  fingerprint = {"text": {s: corpus.para_fingerprint(s, a, b) for s in splits}, "tokenizer": tokenizer.fingerprint(),
                 "pair": [a, b]}

  def validate():
    for s in splits:
      corpus.validate_para(s, a, b)

  files = [f for s in splits for f in corpus.para_files(s, a, b)]
  return parallel.process_zero_first(
      lambda: prepare(f"para.{a}-{b}", cache_dir, texts, n_fields=2, max_len=max_len,
                      encode=[lambda t: tokenizer.encode(t, a), lambda t: tokenizer.encode(t, b)],
                      unk_id=tokenizer.unk_id, eos_id=tokenizer.eos_id, fingerprint=fingerprint,
                      describe=f"pairs {a}-{b}", validate=validate, input_files=files, workers=workers),
      f"prepare-para-{a}-{b}")


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
                           method=lambda m, t, p, l, s, i, **kw: m.predict_at(m.encode(t, p, l, s, **kw), i))
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
      total += 3.0 * (rows * length * forward_flops_per_token(cfg, length) + rows * slots * 2 * cfg.emb_dim
                      * cfg.vocab_size)
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
