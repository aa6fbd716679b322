"""Cross-lingual classification (XNLI and the like): fine-tune a pretraining bundle, evaluate every language.

Orchestration only, as XLM's glue-xnli.py: the encoder comes from `config.init.bundle` (a pretraining workdir, a
converted published model, or another classifier); the head (`xlm_jax.model.Classifier`: the last-layer state at
each example's first `</s>`, dropout, linear) starts fresh. Examples are `</s> a </s> b </s>` (pairs) or
`</s> a </s>` with the example's language id on every token, packed into rows of `classify.row_length` tokens
(`data.rows.ClassifyRows`); the one shared loop trains them. The encoder and the head have their own peak
learning rates (`classify.lr_encoder`, `classify.lr_head`) on `config.train`'s schedule (warm-up, then decay);
`classify.finetune_layers` picks the trained slice of [embeddings, layer 0, ..., layer n-1].

Data (`xlm_jax.data.labelled`): `config.data.train`, `config.data.eval` (evaluated every `log.eval_every` steps;
the model is selected on the eval set of `classify.select_lang`, by default the training language) and optionally
`config.data.test` (evaluated once with the selected model). Labels are kept by name: `classify.labels` or the
sorted training labels, stored in the bundle.

Modes (`classify.mode`):
  zero_shot        train on the given train sets (one language, usually), evaluate every language
  translate_train  also train on the train sets translated into every eval language by the NMT bundle
                   `classify.translate_bundle` (or, without one, on the given train files of several languages)
  translate_test   evaluate held-out sets translated into the training language by `classify.translate_bundle`
                   (or, without one, given files already translated), classified with the training language's id
Translations are made once and cached in WORKDIR/translated/.

Each seed of `classify.seeds` trains in WORKDIR/seed_<s> (resumable; a finished seed is not run again). The
workdir then holds `results.json` (per set and seed: accuracy, predicted-class counts; mean and std over seeds,
the average over languages; warnings), `results.md` (the per-language table), and `checkpoints/` with the
selected model of the best seed on the selection set: `xlm_jax.load(WORKDIR)` opens it as a classifier bundle.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xlm_jax import checkpoint as ckpt
from xlm_jax import parallel, paths, run_setup
from xlm_jax.data.labelled import LabelledSet, parse_items, read_item, read_table, write_tsv
from xlm_jax.data.mixture import BuiltIn, Entry, Mixture, StepSpec, objectives
from xlm_jax.data.rows import ClassifyRows
from xlm_jax.data.stores import TokenStore
from xlm_jax.errors import UserError
from xlm_jax.model import Classifier, TransformerConfig, forward_flops_per_token, init_classifier
from xlm_jax.tokenizer import Tokenizer, tokenizer_from_state
from xlm_jax.train.loop import Loss, TrainTask, prediction_sums, train
from xlm_jax.train.optim import make_split_optimizer

MODES = ("zero_shot", "translate_train", "translate_test")


@dataclasses.dataclass
class Prepared:
  """One labelled set, tokenised: `name` ('dev.de'), the table's language, the language id its tokens carry."""

  name: str
  lang: str
  lang_id: int
  id_lang: str           # the language whose id the tokens carry (differs with unknown_lang='train' or translate_test)
  data: LabelledSet
  rows: ClassifyRows
  truncated: int


# --- set-up ---------------------------------------------------------------------------------------------------


def load_init(config) -> tuple[Any, dict]:
  """(encoder params on the host, bundle meta) of `config.init.bundle`."""
  if not config.init.bundle:
    raise UserError("config.init.bundle is empty; classification fine-tunes a pretrained encoder: give a "
                    "pretraining workdir (or a converted model, or a classifier bundle).")
  params, meta = ckpt.restore_params(config.init.bundle)
  if meta.get("architecture") == "encoder_decoder":
    raise UserError(f"config.init.bundle={config.init.bundle!r} is a translation model; fine-tune a pretrained "
                    "encoder (a pretraining workdir).")
  return run_setup.load_bundle_part(params, meta, "encoder"), meta


def encoder_config(config, meta: dict) -> TransformerConfig:
  """The bundle's encoder shapes, with dropout and compute dtype from `config.model`."""
  run = {k: config.model[k] for k in ("dropout", "attention_dropout", "dtype", "remat")}
  return TransformerConfig.from_dict(meta["model"]).replace(is_decoder=False, causal=False, scan_layers=False, **run)


def read_sets(config, field: str) -> list[LabelledSet]:
  items = parse_items(getattr(config.data, field), f"config.data.{field}")
  return [read_item(item, text_columns=config.classify.text_columns, label_column=config.classify.label_column,
                    tfds_data_dir=config.data.tfds_data_dir, seed=config.seed) for item in items]


def label_names(config, train_sets: Sequence[LabelledSet]) -> list[str]:
  found = sorted({l for s in train_sets for l in s.labels})
  if not config.classify.labels:
    return found
  names = [n.strip() for n in str(config.classify.labels).split(",") if n.strip()]
  for s in train_sets:
    s.label_ids(names, "training")  # a training label outside config.classify.labels names its file and line
  return names


def truncate_pair(a: list[int], b: list[int] | None, budget: int) -> tuple[list[int], list[int] | None, bool]:
  """Cut the longer side (token by token) until `a </s> b` fits `budget` tokens (framing excluded)."""
  a, b = list(a), (None if b is None else list(b))
  total = lambda: len(a) + (0 if b is None else len(b) + 1)
  cut = total() > budget
  while total() > budget:
    if b is not None and len(b) > len(a):
      b.pop()
    else:
      a.pop()
  return a, b, cut


def tokenise(data: LabelledSet, tokenizer: Tokenizer, lang: str | None, row_length: int) -> tuple[TokenStore, int]:
  """Example i as one sentence `a </s> b` (or `a`), cut to fit a row; returns (store, examples truncated)."""
  budget = row_length - 2
  out, truncated = [], 0
  for i in range(len(data)):
    a = tokenizer.encode(data.first[i], lang)
    b = tokenizer.encode(data.second[i], lang) if data.is_pair else None
    a, b, cut = truncate_pair(a, b, budget)
    truncated += cut
    out.append(a if b is None else a + [tokenizer.eos_id] + b)
  return TokenStore.from_sentences(out, tokenizer.eos_id), truncated


def language_id(config, lang: str, languages: list[str], train_lang: str, origin: str) -> str:
  """The language whose id an example of `lang` carries: itself, or (unknown_lang='train') the training language's
  when the bundle lacks it."""
  if lang in languages:
    return lang
  if config.classify.unknown_lang == "train":
    return train_lang
  raise UserError(f"language {lang!r} ({origin}) is not one of the bundle's languages {languages}; drop it, or set "
                  "config.classify.unknown_lang='train' to give its examples the training language's id.")


def translated(config, workdir: str, data: LabelledSet, src: str, tgt: str, nmt, tag: str) -> LabelledSet:
  """`data` translated from `src` into `tgt` by the NMT bundle `nmt` (cached in WORKDIR/translated/)."""
  path = paths.join(workdir, "translated", f"{tag}.{src}-{tgt}.tsv")
  if not paths.exists(path):
    for lang in (src, tgt):
      if lang not in nmt.languages:
        raise UserError(f"the translation bundle {config.classify.translate_bundle!r} has no language {lang!r} (it "
                        f"has {nmt.languages}); it cannot translate {data.origin} from {src} into {tgt}.")
    beam = int(config.classify.translate_beam)
    print(f"translating {len(data)} examples of {data.origin} from {src} into {tgt} ...", flush=True)
    first = nmt.translate(data.first, src=src, tgt=tgt, beam=beam)
    second = nmt.translate(data.second, src=src, tgt=tgt, beam=beam) if data.is_pair else None
    out = LabelledSet(tgt, first, second, list(data.labels), list(data.where), f"{data.origin} translated")
    paths.makedirs(paths.dirname(path))
    write_tsv(path, out)
  return dataclasses.replace(read_table(path, tgt), origin=f"{data.origin} translated {src}->{tgt} ({path})")


def set_name(split: str, data: LabelledSet, taken: set[str]) -> str:
  name = f"{split}.{data.lang}"
  k = 2
  while name in taken:
    name, k = f"{split}.{data.lang}.{k}", k + 1
  taken.add(name)
  return name


@dataclasses.dataclass
class Setup:
  """Everything every seed shares."""

  model_config: TransformerConfig
  encoder_params: Any
  meta_in: dict
  tokenizer: Tokenizer
  languages: list[str]
  labels: list[str]
  train_lang: str
  select: str
  train: list[Prepared]
  eval: list[Prepared]
  test: list[Prepared]
  report: list[str]


def setup(config, workdir: str, mesh) -> Setup:
  """Read, translate and tokenise every set; every check runs before anything is trained."""
  if config.classify.mode not in MODES:
    raise UserError(f"config.classify.mode={config.classify.mode!r} is not one of {MODES}.")
  if config.classify.unknown_lang not in ("error", "train"):
    raise UserError(f"config.classify.unknown_lang={config.classify.unknown_lang!r} must be 'error' or 'train'.")
  if not config.data.train:
    raise UserError("config.data.train is empty; give training data, e.g. 'en:/path/train.tsv'.")
  if not config.data.eval:
    raise UserError("config.data.eval is empty; give held-out data for model selection, e.g. 'en:/path/dev.tsv'.")
  encoder_params, meta = load_init(config)
  cfg = encoder_config(config, meta)
  tokenizer = tokenizer_from_state(meta["tokenizer"])
  languages = list(meta["languages"])
  row_length = int(config.classify.row_length)
  if row_length > cfg.max_positions:
    raise UserError(f"config.classify.row_length={row_length} exceeds the model's max_positions={cfg.max_positions}.")
  parallel.check_batch(int(config.data.batch_size), mesh, int(config.train.accumulate_gradients))
  train_sets, eval_sets = read_sets(config, "train"), read_sets(config, "eval")
  test_sets = read_sets(config, "test") if config.data.test else []
  train_lang = train_sets[0].lang
  pair = {s.is_pair for s in train_sets + eval_sets + test_sets}
  if len(pair) > 1:
    raise UserError("the sets mix sentence pairs and single sentences: "
                    + ", ".join(f"{s.origin} ({'pairs' if s.is_pair else 'single'})" for s in train_sets + eval_sets))
  labels = label_names(config, train_sets)
  if len(labels) < 2:
    raise UserError(f"the training data ({train_sets[0].origin}) has only the label(s) {labels}; a classifier needs "
                    "two or more.")
  for s in eval_sets + test_sets:
    s.label_ids(labels)
  mode, nmt = config.classify.mode, None
  if mode != "zero_shot" and config.classify.translate_bundle:
    import xlm_jax
    nmt = xlm_jax.load(config.classify.translate_bundle)
    if nmt.architecture != "encoder_decoder":
      raise UserError(f"config.classify.translate_bundle={config.classify.translate_bundle!r} is not a translation "
                      "bundle; train one with configs/nmt.py.")
  if mode == "translate_train" and nmt is not None:
    extra = []
    for lang in sorted({s.lang for s in eval_sets + test_sets} - {train_lang}):
      for k, s in enumerate(train_sets):
        if s.lang == train_lang:
          extra.append(translated(config, workdir, s, train_lang, lang, nmt, f"train{k}"))
    train_sets = train_sets + extra
  if mode == "translate_train" and len({s.lang for s in train_sets}) < 2:
    raise UserError("classify.mode='translate_train' needs training data in several languages: give "
                    "classify.translate_bundle (an NMT bundle) or translated train files in config.data.train.")

  report, taken = [], set()

  def prepare(split: str, data: LabelledSet, as_lang: str | None = None) -> Prepared:
    table_lang = data.lang
    id_lang = language_id(config, as_lang or data.lang, languages, train_lang, data.origin)
    store, cut = tokenise(data, tokenizer, id_lang, row_length)
    if cut:
      report.append(f"data: {data.origin}: {cut} of {len(data)} examples truncated to fit rows of {row_length} "
                    "tokens.")
    ids = data.label_ids(labels, "training" if split == "train" else "evaluation")
    rows = ClassifyRows(store, ids, languages.index(id_lang), row_length, tokenizer.pad_id,
                        pool=config.data.pack_pool)
    return Prepared(set_name(split, data, taken), table_lang, languages.index(id_lang), id_lang, data, rows, cut)

  def held_out(split: str, data: LabelledSet) -> Prepared:
    if mode == "translate_test" and data.lang != train_lang:
      if nmt is not None:
        moved = translated(config, workdir, data, data.lang, train_lang, nmt, split)
        return dataclasses.replace(prepare(split, dataclasses.replace(moved, lang=data.lang), train_lang))
      return prepare(split, data, train_lang)  # given files, already in the training language
    return prepare(split, data)

  train_prepared = [prepare("train", s) for s in train_sets]
  eval_prepared = [held_out("dev", s) for s in eval_sets]
  test_prepared = [held_out("test", s) for s in test_sets]
  select_lang = config.classify.select_lang or train_lang
  select = next((p.name for p in eval_prepared if p.lang == select_lang), None)
  if select is None:
    raise UserError(f"no eval set in language {select_lang!r} to select the model on (config.data.eval has "
                    f"{[p.lang for p in eval_prepared]}); add one or set config.classify.select_lang.")
  return Setup(cfg, encoder_params, meta, tokenizer, languages, labels, train_lang, select, train_prepared,
               eval_prepared, test_prepared, report)


# --- the model, its loss and optimizer ---------------------------------------------------------------------------


def parse_layer_range(text: str, n_layers: int) -> range:
  """`classify.finetune_layers`, a Python slice over [embeddings, layer 0, ..., layer n-1] -> the trained indices."""
  try:
    parts = [int(p) if p.strip() else None for p in str(text).split(":")]
    if len(parts) != 2:
      raise ValueError
  except ValueError:
    raise UserError(f"config.classify.finetune_layers={text!r} must be a slice 'i:j' over [embeddings, layer 0, ..., "
                    f"layer {n_layers - 1}], e.g. '0:' (all) or '{n_layers}:' (the top layer only).") from None
  return range(n_layers + 1)[slice(*parts)]


def group_labels(params: Any, trained: range) -> Any:
  """'head' for the head, 'encoder' for trained encoder parameters, 'frozen' for the rest (the MLM output bias is
  never trained, as in the reference)."""

  def label(path, _):
    keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    if keys[0] == "head":
      return "head"
    name = keys[1] if len(keys) > 1 else ""
    if name == "pred_bias":
      return "frozen"
    index = int(name.split("_")[1]) + 1 if name.startswith("layers_") else 0
    return "encoder" if index in trained else "frozen"

  return jax.tree_util.tree_map_with_path(label, params, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def make_loss(model: Classifier) -> Loss:
  def sums(params, batch, rng, deterministic: bool):
    b = batch["cls"]
    rngs = {} if deterministic else {"dropout": rng}
    logits = model.apply({"params": params}, b["tokens"], b["positions"], b["langs"], b["segment_ids"],
                         b["pred_index"], deterministic=deterministic, rngs=rngs)
    return {"cls": prediction_sums(logits, b["pred_targets"], b["pred_weights"])}

  return Loss(sums=sums, weights=lambda batch: {"cls": jnp.sum(batch["cls"]["pred_weights"])},
              lambdas={"cls": lambda step: jnp.asarray(1.0, jnp.float32)})


def make_predict(model: Classifier, n_classes: int):
  """jit(params, rows) -> (correct, count, predicted-class counts [C]) over the weighted slots."""

  def run(params, b):
    logits = model.apply({"params": params}, b["tokens"], b["positions"], b["langs"], b["segment_ids"],
                         b["pred_index"], deterministic=True)
    pred = jnp.argmax(logits, -1)
    w = b["pred_weights"]
    counts = jnp.sum(jax.nn.one_hot(pred, n_classes) * w[..., None], axis=(0, 1))
    return jnp.sum((pred == b["pred_targets"]) * w), jnp.sum(w), counts

  return jax.jit(run)


def evaluate_sets(predict, params, sets: dict[str, list], mesh) -> dict[str, dict]:
  """{set name: {acc, n, predicted}} over whole sets."""
  out = {}
  for name, batches in sets.items():
    correct, count, hist = 0.0, 0.0, None
    for batch in batches:
      c, n, h = jax.device_get(predict(params, parallel.global_batch(batch["cls"], mesh)))
      correct, count = correct + float(c), count + float(n)
      hist = np.asarray(h) if hist is None else hist + np.asarray(h)
    out[name] = {"acc": correct / max(count, 1.0), "n": int(round(count)), "predicted": [int(round(x)) for x in hist]}
  return out


def classifier_meta(config, s: Setup, cfg: TransformerConfig) -> dict:
  return {"format": ckpt.BUNDLE_FORMAT, "task": "classify", "architecture": "classifier", "model": cfg.to_dict(),
          "languages": s.languages, "tokenizer": s.tokenizer.state(), "labels": list(s.labels),
          "pair": s.train[0].data.is_pair, "head_dropout": float(config.classify.head_dropout),
          "init_bundle": str(config.init.bundle), "train_lang": s.train_lang,
          "config": json.loads(json.dumps(config.to_dict(), default=str))}


# --- one seed ----------------------------------------------------------------------------------------------------


def run_seed(config, s: Setup, seed: int, seed_dir: str, mesh) -> dict:
  """Fine-tune with `seed` in `seed_dir`; returns the selection record (also written to selection.json) and keeps
  the selected parameters on the host under 'params'."""
  done = paths.join(seed_dir, "selection.json")
  if paths.exists(done):
    record = json.loads(paths.read_text(done))
    params, _ = ckpt.restore_params(paths.join(seed_dir, "selected"))
    return {**record, "params": params}
  config = config.copy_and_resolve_references()
  config.seed = seed
  cfg = s.model_config
  model = Classifier(cfg, len(s.labels), float(config.classify.head_dropout))
  entries = [Entry(StepSpec("cls", (p.name,)), p.rows) for p in s.train]
  batches = Mixture(objectives(entries, {"cls": BuiltIn()}, config.data.lg_sampling_factor),
                    batch_size=config.data.batch_size, seed=seed, mixing="shared",
                    process_index=jax.process_index(), process_count=jax.process_count(),
                    group_rows=config.data.pack_rows,
                    settings={"row_length": int(config.classify.row_length), "task": "classify",
                              "labels": list(s.labels)})

  def held_out(prepared: list[Prepared]) -> dict[str, list]:
    entries = [Entry(StepSpec("cls", (p.name,)), p.rows) for p in prepared]
    built = batches.eval_batches(entries, max(len(p.data) for p in prepared))
    return {name[len("cls_"):]: b for name, b in built.items()}  # Mixture names them '<key>_<spec>'

  eval_batches = held_out(s.eval)
  test_batches = held_out(s.test) if s.test else {}
  trained = parse_layer_range(config.classify.finetune_layers, cfg.n_layers)
  init = lambda rng: init_classifier(cfg, len(s.labels), rng, float(config.classify.head_dropout))
  labels_fn = lambda params: group_labels(params, trained)
  tx = make_split_optimizer(config.train, {"encoder": float(config.classify.lr_encoder),
                                           "head": float(config.classify.lr_head)}, labels_fn)
  predict = make_predict(model, len(s.labels))
  best = {"step": -1, "acc": -math.inf}

  def init_from(params):
    host = jax.device_get(params)
    encoder, table = run_setup.copy_matching(host["encoder"], s.encoder_params, "encoder", "classifier")
    table += [(f"head/{k}", "fresh") for k in sorted(ckpt.tree_paths(host["head"]))]
    text = run_setup.format_table(table)
    if jax.process_index() == 0:
      paths.write_text(paths.join(seed_dir, "init_table.txt"), text + "\n")
      print(text.splitlines()[0] + f" (full table: {paths.join(seed_dir, 'init_table.txt')})", flush=True)
    out = dict(host, encoder=encoder)
    return jax.tree.map(lambda new, old: jax.device_put(new, old.sharding), out, params)

  def extra_eval(params, step) -> dict:
    results = evaluate_sets(predict, params, eval_batches, mesh)
    acc = results[s.select]["acc"]
    if acc > best["acc"]:
      best.update(step=step, acc=acc, eval=results, params=jax.device_get(params))
    return {f"{name}/acc": r["acc"] for name, r in results.items()}

  meta = classifier_meta(config, s, cfg)

  def step_flops(batch) -> float:
    rows, length = batch["cls"]["tokens"].shape
    return 3.0 * rows * length * forward_flops_per_token(cfg, length)

  task = TrainTask(name="classify", init_params=init, loss=make_loss(model), batches=batches, eval_sets={},
                   meta=meta, step_flops=step_flops,
                   step_tokens=lambda b: int(np.sum(np.asarray(b["cls"]["segment_ids"]) > 0)),
                   compute_dtype=cfg.dtype, extra_eval=extra_eval, init_from=init_from,
                   optimizer=tx)
  train(task, config, seed_dir, mesh)
  if "params" not in best:  # resumed after the last step: evaluate the final parameters
    raise UserError(f"{seed_dir} holds a finished run without its selection record; delete {seed_dir} to re-run "
                    "this seed.")
  test = evaluate_sets(predict, best["params"], test_batches, mesh) if test_batches else {}
  record = {"seed": seed, "selected_step": best["step"], "select_set": s.select, "select_acc": best["acc"],
            "eval": best["eval"], "test": test}
  selected = ckpt.Checkpointer(paths.join(seed_dir, "selected"), keep=1, async_save=False)
  selected.save(best["step"], best["params"], dict(meta, step=best["step"], metrics=flat_metrics(record)))
  selected.wait()
  selected.close()
  paths.write_text(done, json.dumps(record, indent=1))
  return {**record, "params": best["params"]}


def flat_metrics(record: dict) -> dict[str, float]:
  out = {}
  for part in ("eval", "test"):
    for name, r in record.get(part, {}).items():
      out[f"{part}/{name}/cls_acc"] = r["acc"]
  return out


# --- results -----------------------------------------------------------------------------------------------------


def summarise(s: Setup, records: list[dict], share: float) -> dict:
  """Per set: accuracy per seed, mean and std, predicted-class counts; the average over languages; warnings when
  the predictions of a set collapse to one class."""
  part = "test" if s.test else "eval"
  prepared = s.test if s.test else s.eval
  rows, warnings = [], []
  for p in prepared:
    accs = [r[part][p.name]["acc"] for r in records]
    predicted = [r[part][p.name]["predicted"] for r in records]
    for r, counts in zip(records, predicted):
      total = max(sum(counts), 1)
      top = int(np.argmax(counts))
      if counts[top] / total > share:
        warnings.append(f"warning: predictions on {p.name} ({p.data.origin}) collapse to one class: "
                        f"{s.labels[top]!r} for {counts[top] / total:.0%} of {total} examples (seed {r['seed']}).")
    rows.append({"set": p.name, "lang": p.lang, "lang_id_of": p.id_lang, "examples": len(p.data),
                 "truncated": p.truncated, "acc": accs, "mean": float(np.mean(accs)),
                 "std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
                 "predicted": predicted})
  means = [r["mean"] for r in rows]
  per_seed_avg = [float(np.mean([r["acc"][k] for r in rows])) for k in range(len(records))]
  return {"part": part, "labels": list(s.labels), "rows": rows, "average": float(np.mean(means)),
          "average_std": float(np.std(per_seed_avg, ddof=1)) if len(records) > 1 else 0.0,
          "warnings": warnings}


def markdown_table(summary: dict, title: str) -> str:
  """The paper's table: one column per language, accuracy (mean ± std over seeds), and the average."""
  rows = summary["rows"]
  pm = lambda m, sd, n: f"{100 * m:.1f}" + (f" ± {100 * sd:.1f}" if n > 1 else "")
  n = len(rows[0]["acc"]) if rows else 0
  head = "| | " + " | ".join(r["lang"] + ("*" if r["lang_id_of"] != r["lang"] else "") for r in rows) + " | avg |"
  sep = "|---" * (len(rows) + 2) + "|"
  line = "| accuracy (%) | " + " | ".join(pm(r["mean"], r["std"], n) for r in rows) + \
      f" | {pm(summary['average'], summary['average_std'], n)} |"
  notes = [f"{title}: {summary['part']} sets, {n} seed(s), mean ± std over seeds; labels {summary['labels']}."]
  marked = sorted({f"{r['lang']} (id of {r['lang_id_of']})" for r in rows if r["lang_id_of"] != r["lang"]})
  if marked:
    notes.append("* read with another language's id: " + ", ".join(marked) + ".")
  notes += summary["warnings"]
  return "\n".join([head, sep, line, ""] + notes) + "\n"


def run(config, workdir: str, devices=None) -> dict:
  """Fine-tune and evaluate as `config` says, in `workdir`; returns the results (also in results.json)."""
  mesh = parallel.make_mesh(config.mesh.to_dict(), devices)
  try:
    seeds = [int(x) for x in str(config.classify.seeds).split(",") if x.strip()]
  except ValueError:
    raise UserError(f"config.classify.seeds={config.classify.seeds!r} must be integers like '0,1,2'.") from None
  if not seeds:
    raise UserError("config.classify.seeds is empty; give at least one seed, e.g. '0'.")
  s = setup(config, workdir, mesh)
  for line in s.report:
    print(line, flush=True)
  records = [run_seed(config, s, seed, paths.join(workdir, f"seed_{seed}"), mesh) for seed in seeds]
  summary = summarise(s, records, float(config.classify.collapse_share))
  for w in summary["warnings"]:
    print(w, flush=True)
  best = max(records, key=lambda r: r["select_acc"])
  meta = dict(classifier_meta(config, s, s.model_config), step=best["selected_step"], seed=best["seed"],
              metrics=flat_metrics(best))
  out = ckpt.Checkpointer(paths.join(workdir, "checkpoints"), keep=1, async_save=False)
  if out.latest_step() != best["selected_step"]:  # a re-run on a finished workdir keeps the bundle it wrote
    out.save(best["selected_step"], best["params"], meta, force=True)
    out.wait()
  out.close()
  results = {"mode": config.classify.mode, "init_bundle": str(config.init.bundle), "train_lang": s.train_lang,
             "train_sets": [{"name": p.name, "origin": p.data.origin, "examples": len(p.data)} for p in s.train],
             "select_set": s.select, "seeds": seeds, "summary": summary,
             "per_seed": [{k: v for k, v in r.items() if k != "params"} for r in records],
             "bundle": {"seed": best["seed"], "step": best["selected_step"]}}
  paths.write_text(paths.join(workdir, "results.json"), json.dumps(results, indent=1))
  table = markdown_table(summary, f"{config.classify.mode} from {config.init.bundle}")
  paths.write_text(paths.join(workdir, "results.md"), table)
  print(table, flush=True)
  return results
