"""Batches for the NMT trainer: supervised MT, denoising auto-encoding (AE) and back-translation (BT).

Step specs use the reference's syntax: `mt_steps='en-fr,fr-en'` (translate en into fr, and back),
`ae_steps='en,fr'` (reconstruct a noised sentence), `bt_steps='en-fr-en'` (translate an English sentence into
French with the current model, then learn to translate it back into the original English).

Layout (numpy, this process's rows only):

  batch['mt'] / batch['ae'] = {                       several pairs packed per row, as in pretraining
    src_tokens, src_positions, src_langs, src_segments      int32 [B, S]   the encoder's input
    tgt_tokens, tgt_positions, tgt_langs, tgt_segments      int32 [B, T]   `</s> t1 ... tm </s>` per example
    pred_index [B, T-1], pred_targets [B, T-1], pred_weights [B, T-1]  position t predicts token t+1
  }                                                   pair k of a row has segment k on both sides: a target
                                                      token attends (causally) to its own sentence and
                                                      cross-attends to its own source only
  batch['bt'] = {
    tokens [B, S_bt]   one framed sentence per row (language l1), right-padded; the step translates it
    langs1 [B]         its language
    langs2 [B]         the language it is translated into, then back from
  }

Rows are built in groups (one spec per group) from (seed, step, group), as in `pipeline.py`, so runs resume to
the exact batch and do not depend on the number of processes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Sequence

import numpy as np

from xlm_jax.data.masking import clm_row
from xlm_jax.data.noise import NoiseConfig, add_noise
from xlm_jax.data.packing import PairStore
from xlm_jax.data.pipeline import row_rng, sampling_probs
from xlm_jax.data.prepare import PreparedText
from xlm_jax.errors import UserError

KEYS = ("ae", "bt", "mt")
SIDES = ("tokens", "positions", "langs", "segments")


def framed(ids: np.ndarray, eos_id: int) -> np.ndarray:
  out = np.empty(len(ids) + 2, np.int32)
  out[0] = out[-1] = eos_id
  out[1:-1] = ids
  return out


@dataclasses.dataclass(frozen=True)
class NmtSpec:
  """`mt` (l1 -> l2), `ae` (l1 -> l1) or `bt` (l1 -> l2 -> l1)."""

  key: str
  langs: tuple[str, ...]

  @property
  def name(self) -> str:
    return "-".join(self.langs)


def parse_nmt_steps(mt: str, ae: str, bt: str) -> list[NmtSpec]:
  specs = []
  for key, text, arity in (("mt", mt, 2), ("ae", ae, 1), ("bt", bt, 3)):
    for item in (s.strip() for s in (text or "").split(",")):
      if not item:
        continue
      langs = tuple(item.split("-"))
      shape = {1: "'en'", 2: "'en-fr'", 3: "'en-fr-en'"}[arity]
      if len(langs) != arity or any(not l for l in langs):
        raise UserError(f"{key}_steps entry {item!r} must look like {shape}.")
      if key == "mt" and langs[0] == langs[1]:
        raise UserError(f"mt_steps entry {item!r} translates a language into itself; use ae_steps for that.")
      if key == "bt" and (langs[0] != langs[2] or langs[0] == langs[1]):
        raise UserError(f"bt_steps entry {item!r} must be l1-l2-l1 with two different languages, e.g. 'en-fr-en'.")
      specs.append(NmtSpec(key, langs))
  if len(set(specs)) != len(specs):
    raise UserError("a step spec appears twice in mt_steps/ae_steps/bt_steps.")
  if not specs:
    raise UserError("no NMT steps: set config.nmt.mt_steps, ae_steps and/or bt_steps.")
  return specs


class SentenceStore:
  """Random access to the sentences of one prepared monolingual dataset split, framed length <= max_tokens."""

  def __init__(self, data: PreparedText, split: str, max_tokens: int, in_memory: bool = True):
    lengths = data.lengths(split).astype(np.int64)
    ok = lengths + 2 <= max_tokens
    self.index = np.flatnonzero(ok)
    self._data, self._split = data, split
    self.mean_tokens = float((lengths[ok] + 2).mean()) if ok.any() else 0.0
    self._flat = None
    if in_memory:
      every = data.read_all(split)
      self._flat = [every[i] for i in self.index]

  def __len__(self) -> int:
    return len(self.index)

  def get(self, k: int) -> np.ndarray:
    if self._flat is not None:
      return self._flat[k]
    return self._data.read(self._split, [int(self.index[k])])[0]


Example = tuple[np.ndarray, np.ndarray, int, int]  # framed source, framed target, source lang, target lang


def pack_pairs(examples: Sequence[Example], n_rows: int, src_len: int, tgt_len: int) -> list[list[Example]]:
  """First-fit decreasing on both sides: an example goes to the first row where source and target both fit."""
  rows: list[list[Example]] = [[] for _ in range(n_rows)]
  used = np.zeros((n_rows, 2), np.int64)
  for i in sorted(range(len(examples)), key=lambda i: -max(len(examples[i][0]), len(examples[i][1]))):
    s, t = len(examples[i][0]), len(examples[i][1])
    fits = np.flatnonzero((used[:, 0] + s <= src_len) & (used[:, 1] + t <= tgt_len))
    if fits.size:
      rows[fits[0]].append(examples[i])
      used[fits[0]] += (s, t)
  return rows


def _side(pieces: Sequence[np.ndarray], langs: Sequence[int], length: int, pad_id: int):
  tokens = np.full(length, pad_id, np.int32)
  positions = np.zeros(length, np.int32)
  lang_ids = np.full(length, langs[-1] if langs else 0, np.int32)
  segments = np.zeros(length, np.int32)
  at = 0
  for k, (piece, lang) in enumerate(zip(pieces, langs), 1):
    n = len(piece)
    tokens[at:at + n], positions[at:at + n], lang_ids[at:at + n], segments[at:at + n] = piece, np.arange(n), lang, k
    at += n
  return tokens, positions, lang_ids, segments


def pair_row(examples: Sequence[Example], src_len: int, tgt_len: int, pad_id: int) -> dict[str, np.ndarray]:
  """One packed MT/AE row with its next-token targets."""
  row = {}
  for prefix, i, lang_i, length in (("src", 0, 2, src_len), ("tgt", 1, 3, tgt_len)):
    values = _side([e[i] for e in examples], [e[lang_i] for e in examples], length, pad_id)
    row.update({f"{prefix}_{name}": v for name, v in zip(SIDES, values)})
  _, index, targets, weights = clm_row(row["tgt_tokens"], row["tgt_segments"])
  row.update(pred_index=index, pred_targets=targets, pred_weights=weights)
  return row


class MtSource:
  """Pairs of one direction (`en-fr`: English source, French target)."""

  def __init__(self, store: PairStore, swap: bool, lang1: int, lang2: int, eos_id: int):
    self.store, self.swap, self.lang1, self.lang2, self.eos_id = store, swap, lang1, lang2, eos_id
    self.size = len(store)

  def example(self, k: int) -> Example:
    a, b = self.store.get(k)
    if self.swap:
      a, b = b, a
    return framed(a, self.eos_id), framed(b, self.eos_id), self.lang1, self.lang2

  def draw(self, rng: np.random.Generator) -> Example:
    return self.example(int(rng.integers(self.size)))

  def mean_tokens(self) -> float:
    return self.store.mean_tokens / 2


class AeSource:
  """Sentences of one language, each a (noised copy -> original) example."""

  def __init__(self, store: SentenceStore, lang: int, eos_id: int, noise: NoiseConfig):
    self.store, self.lang, self.eos_id, self.noise = store, lang, eos_id, noise
    self.size = len(store)

  def example_from(self, rng: np.random.Generator, k: int) -> Example:
    clean = framed(self.store.get(k), self.eos_id)
    return add_noise(rng, clean, self.noise), clean, self.lang, self.lang

  def draw(self, rng: np.random.Generator) -> Example:
    return self.example_from(rng, int(rng.integers(self.size)))

  def mean_tokens(self) -> float:
    return self.store.mean_tokens


@dataclasses.dataclass
class NmtEntry:
  spec: NmtSpec
  source: object  # MtSource | AeSource | SentenceStore (bt)
  lang_ids: tuple[int, ...]


class NmtBatches:
  """Builds this process's rows of the NMT batch of any step (see the module docstring)."""

  def __init__(self, *, entries: Sequence[NmtEntry], batch_size: int, src_len: int, tgt_len: int, bt_len: int,
               eos_id: int, pad_id: int, seed: int, mixing: str = "shared", lg_sampling_factor: float = -1.0,
               process_index: int = 0, process_count: int = 1, group_rows: int = 8, pool: float = 1.3):
    if mixing not in ("shared", "separate"):
      raise UserError(f"config.data.mixing={mixing!r} must be 'shared' or 'separate'.")
    local = batch_size // process_count
    if batch_size % process_count or local % group_rows:
      raise UserError(f"batch_size {batch_size} must split into {process_count} processes of whole groups of "
                      f"config.data.pack_rows={group_rows} rows.")
    self.batch_size, self.src_len, self.tgt_len, self.bt_len = batch_size, src_len, tgt_len, bt_len
    self.eos_id, self.pad_id, self.seed, self.mixing = eos_id, pad_id, seed, mixing
    self.process_index, self.process_count, self.group_rows, self.pool = process_index, process_count, group_rows, pool
    self.objectives = []
    for key in KEYS:
      mine = [e for e in entries if e.spec.key == key]
      if mine:
        sizes = [len(e.source) if key == "bt" else e.source.size for e in mine]
        self.objectives.append((key, mine, sampling_probs(sizes, lg_sampling_factor)))

  @property
  def local_batch_size(self) -> int:
    return self.batch_size // self.process_count

  def fingerprint(self) -> str:
    desc = {"seed": self.seed, "batch": self.batch_size, "lens": [self.src_len, self.tgt_len, self.bt_len],
            "mixing": self.mixing, "group": self.group_rows, "pool": self.pool,
            "objectives": [(k, [e.spec.name for e in es], p.round(8).tolist()) for k, es, p in self.objectives]}
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]

  def _group(self, key: str, entry: NmtEntry, rng: np.random.Generator) -> list[dict]:
    n = self.group_rows
    if key == "bt":
      store, (l1, l2) = entry.source, entry.lang_ids[:2]
      rows = []
      for _ in range(n):
        sentence = framed(store.get(int(rng.integers(len(store)))), self.eos_id)
        tokens = np.full(self.bt_len, self.pad_id, np.int32)
        tokens[:len(sentence)] = sentence
        rows.append({"tokens": tokens, "langs1": np.int32(l1), "langs2": np.int32(l2)})
      return rows
    k = int(np.ceil(n * max(self.src_len, self.tgt_len) / max(entry.source.mean_tokens(), 1.0) * self.pool))
    examples = [entry.source.draw(rng) for _ in range(k)]
    return [pair_row(r, self.src_len, self.tgt_len, self.pad_id)
            for r in pack_pairs(examples, n, self.src_len, self.tgt_len)]

  def batch(self, step: int) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    first = self.process_index * self.local_batch_size
    objectives = self.objectives if self.mixing == "shared" else [self.objectives[step % len(self.objectives)]]
    for key, entries, probs in objectives:
      salt = 10 + KEYS.index(key)
      step_entry = None
      if self.mixing == "separate":
        step_entry = entries[row_rng(self.seed, step, (1 << 32) - 1, salt).choice(len(entries), p=probs)]
      rows = []
      for g in range(first // self.group_rows, (first + self.local_batch_size) // self.group_rows):
        rng = row_rng(self.seed, step, g, salt)
        entry = step_entry or entries[rng.choice(len(entries), p=probs)]
        rows.extend(self._group(key, entry, rng))
      out[key] = {name: np.stack([r[name] for r in rows]) for name in rows[0]}
    return out

  def eval_batches(self, sources: Sequence[tuple[str, MtSource]], max_rows: int) -> dict[str, list[dict]]:
    """Teacher-forced held-out batches per `mt_<l1>-<l2>`: pairs in file order, packed first-fit sequentially."""
    result = {}
    for name, source in sources:
      rows, current, used = [], [], [0, 0]
      for k in range(source.size):
        ex = source.example(k)
        if used[0] + len(ex[0]) > self.src_len or used[1] + len(ex[1]) > self.tgt_len:
          rows.append(pair_row(current, self.src_len, self.tgt_len, self.pad_id))
          current, used = [], [0, 0]
          if len(rows) == max_rows:
            break
        current.append(ex)
        used = [used[0] + len(ex[0]), used[1] + len(ex[1])]
      if current and len(rows) < max_rows:
        rows.append(pair_row(current, self.src_len, self.tgt_len, self.pad_id))
      batches = []
      b, local = self.batch_size, self.local_batch_size
      for start in range(0, len(rows), b):
        chunk = rows[start:start + b]
        while len(chunk) < b:
          chunk.append({**chunk[0], "pred_weights": np.zeros_like(chunk[0]["pred_weights"])})
        mine = chunk[self.process_index * local:(self.process_index + 1) * local]
        batches.append({"mt": {k: np.stack([r[k] for r in mine]) for k in mine[0]}})
      result[f"mt_{name}"] = batches
    return result
