"""Training and evaluation batches for pretraining: step specs, language sampling, objective mixing, resume.

Batch layout (numpy, this process's rows only; the loop assembles the global array):

  batch[objective] = {               objective: 'mlm' (monolingual streams), 'tlm' (packed pairs), 'clm'
    tokens       int32 [B, L]   model input (MLM/TLM: after masking)
    positions    int32 [B, L]   0.. per example; restart at a TLM pair's second sentence
    langs        int32 [B, L]   language id per token
    segment_ids  int32 [B, L]   0 = padding; one id per example (both halves of a TLM pair share it)
    pred_index   int32 [B, P]   positions whose token is predicted (P fixed per objective)
    pred_targets int32 [B, P]   the original tokens there
    pred_weights f32   [B, P]   1 = a real prediction, 0 = an unused slot
  }

Step specs use the reference's syntax: `mlm_steps='en,fr,en-fr,fr-en'` gives MLM on the monolingual streams of
en and fr (batch key 'mlm') and TLM on en-fr pairs in both orders (batch key 'tlm'); `clm_steps='en,fr'` gives
CLM on streams. Within each batch key, a group of rows picks its entry with p ~ n**lg_sampling_factor
(n = sentences or pairs), so monolingual and parallel data are sampled separately, as in the reference.

Determinism and resume: rows are built in groups of `group_rows` (packed together; one language or pair per
group), and group g of step s is a pure function of (seed, s, g), so a resumed run sees exactly the batches an
uninterrupted run sees, whatever the number of processes; each process builds (and reads the data of) its own
groups only. The iterator state saved in checkpoints is the next step plus a
fingerprint of the data settings. Rows are drawn with replacement (a mixture, as seqio and Grain mixtures are).

Mixing objectives (`mixing`):
- "shared": every step has one batch of `batch_size` rows per objective key; the losses are summed with their
  weights into one optimizer update.
- "separate" (the reference's way): step s trains one objective key alone (they take turns), all rows of the
  step from one language or pair drawn with the same probabilities; each step is its own update.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import queue
import threading
from typing import Iterator, Mapping, Protocol, Sequence

import numpy as np

from xlm_jax.data.masking import MaskingConfig, clm_row, mask_row, mlm_slots
from xlm_jax.data.packing import PairDirection, pack, pack_group
from xlm_jax.data.streams import TokenStream
from xlm_jax.errors import UserError

OBJECTIVES = ("clm", "mlm", "tlm")
FIELDS = ("tokens", "positions", "langs", "segment_ids", "pred_index", "pred_targets", "pred_weights")
EVAL_SEED = 12345


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """One entry of a step string: an objective on one language (`'en'`) or a language pair (`'en-fr'`)."""

  objective: str
  langs: tuple[str, ...]

  @property
  def name(self) -> str:
    return "-".join(self.langs)

  @property
  def key(self) -> str:
    """The batch key: monolingual MLM -> 'mlm', MLM on a pair (TLM) -> 'tlm', CLM -> 'clm'."""
    return "tlm" if self.objective == "mlm" and len(self.langs) == 2 else self.objective


def parse_steps(text: str, objective: str) -> list[StepSpec]:
  """Parse a reference-style step string: `'en,fr,en-fr'` -> [(en), (fr), (en, fr)]."""
  specs = []
  for item in (s.strip() for s in (text or "").split(",")):
    if not item:
      continue
    langs = tuple(item.split("-"))
    if len(langs) > 2 or any(not l for l in langs) or (len(langs) == 2 and langs[0] == langs[1]):
      raise UserError(f"{objective}_steps entry {item!r} is neither a language ('en') nor a pair ('en-fr').")
    if objective == "clm" and len(langs) == 2:
      raise UserError(f"clm_steps entry {item!r}: CLM on sentence pairs is not supported; use monolingual "
                      "languages in clm_steps (TLM on pairs goes in mlm_steps).")
    specs.append(StepSpec(objective, langs))
  if len(set(specs)) != len(specs):
    raise UserError(f"{objective}_steps={text!r} names an entry twice.")
  return specs


def sampling_probs(sizes: Sequence[int], factor: float) -> np.ndarray:
  """p ~ n**factor over the entries (factor -1 = uniform, the reference's default; 1 = proportional)."""
  n = np.asarray(sizes, np.float64)
  if factor < 0:
    return np.full(len(n), 1.0 / len(n))
  p = (n / n.sum()) ** factor
  return p / p.sum()


def row_rng(seed: int, step: int, row: int, salt: int) -> np.random.Generator:
  return np.random.default_rng([seed, step, row, salt])


Row = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # tokens, positions, langs, segments


class RowSource(Protocol):
  """Makes rows of one step spec: random ones for training, a fixed sequence for evaluation."""

  size: int  # sentences or pairs, for language sampling

  def draw_rows(self, rng: np.random.Generator, n: int) -> list[Row]:
    ...

  def eval_rows(self, max_rows: int) -> list[Row]:
    ...


class StreamRows:
  """Rows of a monolingual stream (one segment, positions 0..L-1, no padding)."""

  def __init__(self, stream: TokenStream, lang_id: int, size: int):
    self.stream, self.lang_id, self.size = stream, lang_id, size
    length = stream.bptt
    self._positions = np.arange(length, dtype=np.int32)
    self._langs = np.full(length, lang_id, np.int32)
    self._segments = np.ones(length, np.int32)

  def _row(self, c: int) -> Row:
    return self.stream.row(c), self._positions, self._langs, self._segments

  def draw_rows(self, rng: np.random.Generator, n: int) -> list[Row]:
    return [self._row(int(rng.integers(self.stream.n_rows))) for _ in range(n)]

  def eval_rows(self, max_rows: int) -> list[Row]:
    return [self._row(c) for c in range(min(self.stream.n_rows, max_rows))]


class PackedPairRows:
  """Rows packed with TLM examples of one direction of a language pair."""

  def __init__(self, direction: PairDirection, length: int, pad_id: int, pool: float = 1.3):
    self.direction, self.length, self.pad_id, self.pool = direction, length, pad_id, pool
    self.size = len(direction.store)
    if self.size == 0:
      raise UserError(f"no sentence pair fits a row of {length} tokens; raise config.data.bptt.")

  def draw_rows(self, rng: np.random.Generator, n: int) -> list[Row]:
    """`n` rows packed together (first-fit decreasing) from a pool of random pairs ~`pool` times what fits."""
    k = int(np.ceil(n * self.length / self.direction.mean_tokens() * self.pool))
    examples = [self.direction.draw(rng) for _ in range(k)]
    return [pack(row, self.length, self.pad_id) for row in pack_group(examples, n, self.length)]

  def eval_rows(self, max_rows: int) -> list[Row]:
    """Pairs in file order, packed first-fit sequentially (the next pair that does not fit opens a new row)."""
    rows, current, used = [], [], 0
    for k in range(len(self.direction.store)):
      ex = self.direction.example(k)
      if used + len(ex[0]) > self.length:
        rows.append(pack(current, self.length, self.pad_id))
        if len(rows) == max_rows:
          return rows
        current, used = [], 0
      current.append(ex)
      used += len(ex[0])
    if current and len(rows) < max_rows:
      rows.append(pack(current, self.length, self.pad_id))
    return rows


@dataclasses.dataclass(frozen=True)
class Entry:
  """One step spec with its row source."""

  spec: StepSpec
  source: RowSource


@dataclasses.dataclass
class ObjectiveData:
  """The entries of one batch key, with their sampling probabilities and prediction-slot count."""

  key: str
  entries: list[Entry]
  probs: np.ndarray
  n_slots: int


class PretrainBatches:
  """Builds this process's rows of the batch of any step."""

  def __init__(self, *, entries: Sequence[Entry], batch_size: int, seq_len: int, masking: MaskingConfig, seed: int,
               mixing: str = "shared", lg_sampling_factor: float = -1.0, process_index: int = 0,
               process_count: int = 1, token_scores: np.ndarray | None = None, group_rows: int = 8):
    if mixing not in ("shared", "separate"):
      raise UserError(f"config.data.mixing={mixing!r} must be 'shared' or 'separate'.")
    if batch_size % process_count:
      raise UserError(f"batch_size {batch_size} is not divisible by the {process_count} processes.")
    if (batch_size // process_count) % group_rows:
      raise UserError(f"each process builds {batch_size // process_count} rows, not a multiple of "
                      f"config.data.pack_rows={group_rows} (rows packed together); change one of them.")
    self.group_rows = group_rows
    self.batch_size = batch_size
    self.seq_len = seq_len
    self.masking = masking
    self.seed = seed
    self.mixing = mixing
    self.process_index = process_index
    self.process_count = process_count
    self.token_scores = token_scores
    self.objectives: list[ObjectiveData] = []
    for key in OBJECTIVES:
      mine = [e for e in entries if e.spec.key == key]
      if mine:
        probs = sampling_probs([e.source.size for e in mine], lg_sampling_factor)
        n_slots = seq_len - 1 if key == "clm" else mlm_slots(seq_len, masking.word_pred)
        self.objectives.append(ObjectiveData(key, mine, probs, n_slots))
    if not self.objectives:
      raise UserError("no training steps: set config.data.mlm_steps and/or config.data.clm_steps.")

  @property
  def local_batch_size(self) -> int:
    return self.batch_size // self.process_count

  def fingerprint(self) -> str:
    desc = {"seed": self.seed, "batch": self.batch_size, "len": self.seq_len, "mixing": self.mixing,
            "group": self.group_rows,
            "masking": dataclasses.asdict(self.masking),
            "objectives": [(o.key, [e.spec.name for e in o.entries], [e.source.size for e in o.entries],
                            o.probs.round(8).tolist()) for o in self.objectives]}
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]

  def objectives_at(self, step: int) -> list[ObjectiveData]:
    if self.mixing == "shared":
      return self.objectives
    return [self.objectives[step % len(self.objectives)]]

  def _targets(self, key: str, row: Row, rng: np.random.Generator | None, n_slots: int,
               masking: MaskingConfig) -> tuple:
    tokens, positions, langs, segments = row
    if key == "clm":
      inputs, index, targets, weights = clm_row(tokens, segments)
    else:
      inputs, index, targets, weights = mask_row(rng, tokens, segments > 0, masking, n_slots, self.token_scores)
    return inputs, positions, langs, segments, index, targets, weights

  def batch(self, step: int) -> dict[str, dict[str, np.ndarray]]:
    """This process's rows of the batch of `step`."""
    out = {}
    first = self.process_index * self.local_batch_size
    for obj in self.objectives_at(step):
      salt = OBJECTIVES.index(obj.key)
      step_entry = None
      if self.mixing == "separate":
        step_rng = row_rng(self.seed, step, (1 << 32) - 1, salt)
        step_entry = obj.entries[step_rng.choice(len(obj.entries), p=obj.probs)]
      rows = []
      for g in range(first // self.group_rows, (first + self.local_batch_size) // self.group_rows):
        rng = row_rng(self.seed, step, g, salt)
        entry = step_entry or obj.entries[rng.choice(len(obj.entries), p=obj.probs)]
        for row in entry.source.draw_rows(rng, self.group_rows):
          rows.append(self._targets(obj.key, row, rng, obj.n_slots, self.masking))
      out[obj.key] = {name: np.stack([row[i] for row in rows]) for i, name in enumerate(FIELDS)}
    return out

  def eval_batches(self, valid_entries: Sequence[Entry], max_rows: int) -> dict[str, list[dict]]:
    """Held-out batches per `<key>_<spec>`: the first `max_rows` rows of each entry, deterministic masks (fixed
    seed, 100% <mask>, as the reference's evaluator), padded with weight-0 rows to whole batches. This process's
    rows only; each batch is `{key: fields}`."""
    eval_masking = dataclasses.replace(self.masking, mask_keep_rand=(1.0, 0.0, 0.0))
    slots = {o.key: o.n_slots for o in self.objectives}
    result = {}
    for entry in valid_entries:
      key = entry.spec.key
      rows = []
      for c, row in enumerate(entry.source.eval_rows(max_rows)):
        rng = row_rng(EVAL_SEED, c, 0, OBJECTIVES.index(key))
        rows.append(self._targets(key, row, rng, slots[key], eval_masking))
      if rows:
        result[f"{key}_{entry.spec.name}"] = [{key: b} for b in self._to_batches(rows)]
    return result

  def _to_batches(self, rows: list) -> list[dict]:
    batches = []
    b, local = self.batch_size, self.local_batch_size
    for start in range(0, len(rows), b):
      chunk = rows[start:start + b]
      while len(chunk) < b:  # fill with a weight-0 copy so shapes stay fixed
        *fields, weights = chunk[0]
        chunk.append((*fields, np.zeros_like(weights)))
      mine = chunk[self.process_index * local:(self.process_index + 1) * local]
      batches.append({name: np.stack([row[i] for row in mine]) for i, name in enumerate(FIELDS)})
    return batches


def batch_checksum(batch: Mapping) -> str:
  """A short hash of a (nested) batch, to compare the batch sequences of two runs."""
  h = hashlib.sha256()
  for key in sorted(batch):
    value = batch[key]
    if isinstance(value, Mapping):
      h.update(key.encode() + batch_checksum(value).encode())
    else:
      h.update(key.encode() + np.ascontiguousarray(value).tobytes())
  return h.hexdigest()[:16]


class DataIterator:
  """Yields (step, batch) from `start_step`, built ahead in a background thread; `state()` is checkpointed."""

  def __init__(self, batches: PretrainBatches, start_step: int = 0, prefetch: int = 4):
    self._batches = batches
    self._next = start_step
    self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._work, args=(start_step,), daemon=True)
    self._thread.start()

  def _work(self, step: int):
    try:
      while not self._stop.is_set():
        item = (step, self._batches.batch(step))
        while not self._stop.is_set():
          try:
            self._queue.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        step += 1
    except BaseException as e:  # hand errors to the consumer
      self._queue.put(e)

  def __iter__(self) -> Iterator:
    return self

  def __next__(self):
    item = self._queue.get()
    if isinstance(item, BaseException):
      raise item
    self._next = item[0] + 1
    return item

  def state(self) -> dict:
    """What a checkpoint stores: the next step to produce and the fingerprint of the data settings."""
    return {"next_step": self._next, "fingerprint": self._batches.fingerprint()}

  def close(self):
    self._stop.set()
    self._thread.join(timeout=5)
