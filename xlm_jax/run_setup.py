"""The run set-up every task shares: corpus, tokenizer, prepared token stores, resume checks, seeding from a bundle.

Pretraining (`train/pretrain.py`), NMT (`train/nmt.py`) and classification (`train/classify.py`) are orchestration
on top of these helpers; none of them imports another task's module for its set-up.

  model_config      the encoder config of a run: `config.model` plus vocabulary, languages and pad id
  existing_meta     the bundle metadata of a workdir's newest checkpoint (None for a fresh workdir)
  check_resume      refuse a workdir whose checkpoint holds another model or language set
  make_corpus       the sources `config.data.corpus` names
  parse_line_windows / line_window   `config.data.mono_lines`: which training lines of a language are used
  load_tokenizer / get_tokenizer     a saved tokenizer, or one trained on the training text
  prepare_mono / prepare_para        tokenise (once) monolingual text and aligned pairs into token stores
  load_bundle_part / copy_matching / format_table   seed a fresh parameter tree from a bundle, with the table of
                    loaded / fresh / ignored parameters
"""
from __future__ import annotations

import itertools
import json
from typing import Any, Mapping

import jax
import numpy as np

from xlm_jax import checkpoint as ckpt
from xlm_jax import parallel, paths
from xlm_jax.data import sources as sources_lib
from xlm_jax.data.prepare import prepare
from xlm_jax.errors import UserError
from xlm_jax.model import TransformerConfig
from xlm_jax.tokenizer import LanguageEncoder, Tokenizer, tokenizer_from_state, train_sentencepiece


def model_config(config, vocab_size: int, n_langs: int, pad_id: int) -> TransformerConfig:
  """The model of a run: `config.model` plus what the data decides (vocabulary, languages, pad id)."""
  fields = {k: v for k, v in config.model.to_dict().items() if k != "decoder_layers"}
  return TransformerConfig(vocab_size=vocab_size, n_langs=n_langs, pad_id=pad_id, **fields)


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
      lambda: prepare(f"mono.{lang}", cache_dir, texts, n_fields=1, encode=LanguageEncoder(tokenizer, lang),
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
                      encode=[LanguageEncoder(tokenizer, a), LanguageEncoder(tokenizer, b)],
                      unk_id=tokenizer.unk_id, eos_id=tokenizer.eos_id, fingerprint=fingerprint,
                      describe=f"pairs {a}-{b}", validate=validate, input_files=files, workers=workers),
      f"prepare-para-{a}-{b}")


def load_bundle_part(params: Any, meta: Mapping, part: str) -> Any:
  """The encoder (or decoder) parameters of a bundle: an encoder-decoder's `part`, a classifier's encoder, an
  encoder bundle's whole tree (the same tree for both parts)."""
  if meta.get("architecture") == "encoder_decoder":
    return params[part]
  if meta.get("architecture") == "classifier":
    return params["encoder"]
  return params


def unflatten(template: Any, flat: Mapping[str, Any]) -> Any:
  """The tree of `template`'s structure with the leaves of `flat` ({'a/b/c': leaf}, as `ckpt.tree_paths`)."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
  values = []
  for path, _ in leaves:
    key = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
    values.append(flat[key])
  return jax.tree_util.tree_unflatten(treedef, values)


def copy_matching(fresh: Any, source: Any | None, prefix: str, what: str = "model"
                  ) -> tuple[Any, list[tuple[str, str]]]:
  """`fresh` (a host tree) with every leaf that `source` has at the same path copied in (cast to the fresh
  dtype); returns (tree, table rows (prefix/path, 'loaded' | 'fresh' | 'ignored')). A leaf of another shape is a
  `UserError` naming it; `source` None copies nothing."""
  flat_fresh = ckpt.tree_paths(fresh)
  flat_src = ckpt.tree_paths(source) if source is not None else {}
  table, new_flat, used = [], {}, set()
  for path, leaf in flat_fresh.items():
    if path in flat_src:
      if tuple(np.shape(flat_src[path])) != tuple(np.shape(leaf)):
        raise UserError(f"pretrained parameter {prefix}/{path} has shape {np.shape(flat_src[path])}, the {what} "
                        f"needs {np.shape(leaf)}; the widths or vocabularies differ.")
      new_flat[path] = np.asarray(flat_src[path], dtype=np.asarray(leaf).dtype)
      used.add(path)
      table.append((f"{prefix}/{path}", "loaded"))
    else:
      new_flat[path] = leaf
      table.append((f"{prefix}/{path}", "fresh"))
  for path in sorted(set(flat_src) - used):
    table.append((f"{prefix}/{path}", "ignored"))
  return unflatten(fresh, new_flat), table


def format_table(table: list[tuple[str, str]]) -> str:
  counts = {s: sum(1 for _, x in table if x == s) for s in ("loaded", "fresh", "ignored")}
  lines = [f"initialisation: {counts['loaded']} loaded, {counts['fresh']} fresh, {counts['ignored']} ignored"]
  lines += [f"  {status:8s} {path}" for path, status in table]
  return "\n".join(lines)
