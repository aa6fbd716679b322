"""Training and evaluation batches for pretraining: step specs, language sampling, objective mixing, resume.

Batch layout (numpy, this process's rows only; the loop assembles the global array):

  batch[objective] = {
    tokens       int32 [B, L]   model input (MLM: after masking)
    positions    int32 [B, L]   0.. per row (restart at a TLM pair's second sentence)
    langs        int32 [B, L]   language id per token
    segment_ids  int32 [B, L]   0 = padding; one id per example (both halves of a TLM pair share it)
    pred_index   int32 [B, P]   positions whose token is predicted (P fixed per objective)
    pred_targets int32 [B, P]   the original tokens there
    pred_weights f32   [B, P]   1 = a real prediction, 0 = an unused slot
  }

Determinism and resume: the rows of step s are a pure function of (seed, s, global row number), so a run that
resumes at step s sees exactly the batches an uninterrupted run sees, whatever the number of processes. The
iterator state saved in checkpoints is therefore just the next step plus a fingerprint of the data settings.
Rows are drawn with replacement (a mixture, as seqio and Grain mixtures do), not in epochs.

Mixing objectives (`mixing`):
- "shared": every step has one batch per objective (mlm, clm); rows pick their language (pair) with
  p ~ n**lg_sampling_factor; the losses are summed with their weights and make one optimizer update.
- "separate" (the reference's way): step s trains objective s mod n_objectives alone, all rows of the step from
  one language (pair) drawn with the same probabilities; each step is its own update.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import queue
import threading
from typing import Iterator, Mapping, Sequence

import numpy as np

from xlm_jax.data.masking import MaskingConfig, clm_row, mask_row, mlm_slots
from xlm_jax.data.streams import TokenStream
from xlm_jax.errors import UserError

OBJECTIVES = ("clm", "mlm")
FIELDS = ("tokens", "positions", "langs", "segment_ids", "pred_index", "pred_targets", "pred_weights")


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """One entry of a step string: an objective on one language (`'en'`) or a language pair (`'en-fr'`)."""

  objective: str
  langs: tuple[str, ...]

  @property
  def name(self) -> str:
    return "-".join(self.langs)


def parse_steps(text: str, objective: str) -> list[StepSpec]:
  """Parse a reference-style step string: `'en,fr,en-fr'` -> [(en), (fr), (en, fr)]."""
  specs = []
  for item in (s.strip() for s in (text or "").split(",")):
    if not item:
      continue
    langs = tuple(item.split("-"))
    if len(langs) > 2 or any(not l for l in langs) or (len(langs) == 2 and langs[0] == langs[1]):
      raise UserError(f"{objective}_steps entry {item!r} is neither a language ('en') nor a pair ('en-fr').")
    specs.append(StepSpec(objective, langs))
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


@dataclasses.dataclass
class ObjectiveData:
  """The step specs of one objective, with their sources and sampling probabilities."""

  objective: str
  specs: list[StepSpec]
  probs: np.ndarray
  n_slots: int


class PretrainBatches:
  """Builds the batch of any step from monolingual streams (and, with issue 4's sources, parallel pairs)."""

  def __init__(self, *, streams: Mapping[str, TokenStream], sizes: Mapping[str, int], lang2id: Mapping[str, int],
               specs: Sequence[StepSpec], batch_size: int, seq_len: int, masking: MaskingConfig, seed: int,
               mixing: str = "shared", lg_sampling_factor: float = -1.0, process_index: int = 0,
               process_count: int = 1, token_scores: np.ndarray | None = None):
    if mixing not in ("shared", "separate"):
      raise UserError(f"config.data.mixing={mixing!r} must be 'shared' or 'separate'.")
    if batch_size % process_count:
      raise UserError(f"batch_size {batch_size} is not divisible by the {process_count} processes.")
    for spec in specs:
      if len(spec.langs) != 1:
        raise UserError(f"{spec.objective}_steps entry {spec.name!r} needs parallel data, which this corpus "
                        "configuration does not provide.")
      if spec.langs[0] not in streams:
        raise UserError(f"{spec.objective}_steps names language {spec.langs[0]!r}, which has no data; the "
                        f"languages with data are {sorted(streams)}.")
    self.streams = streams
    self.lang2id = dict(lang2id)
    self.batch_size = batch_size
    self.seq_len = seq_len
    self.masking = masking
    self.seed = seed
    self.mixing = mixing
    self.process_index = process_index
    self.process_count = process_count
    self.token_scores = token_scores
    self.objectives: list[ObjectiveData] = []
    for objective in OBJECTIVES:
      mine = [s for s in specs if s.objective == objective]
      if mine:
        probs = sampling_probs([sizes[s.langs[0]] for s in mine], lg_sampling_factor)
        n_slots = mlm_slots(seq_len, masking.word_pred) if objective == "mlm" else seq_len - 1
        self.objectives.append(ObjectiveData(objective, mine, probs, n_slots))
    if not self.objectives:
      raise UserError("no training steps: set config.data.mlm_steps and/or config.data.clm_steps.")

  @property
  def local_batch_size(self) -> int:
    return self.batch_size // self.process_count

  def fingerprint(self) -> str:
    desc = {"seed": self.seed, "batch": self.batch_size, "len": self.seq_len, "mixing": self.mixing,
            "masking": dataclasses.asdict(self.masking),
            "objectives": [(o.objective, [s.name for s in o.specs], o.probs.round(8).tolist())
                           for o in self.objectives],
            "streams": {l: s.n_tokens for l, s in sorted(self.streams.items())}}
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]

  def objectives_at(self, step: int) -> list[ObjectiveData]:
    if self.mixing == "shared":
      return self.objectives
    return [self.objectives[step % len(self.objectives)]]

  def _stream_row(self, spec: StepSpec, rng: np.random.Generator):
    stream = self.streams[spec.langs[0]]
    tokens = stream.row(int(rng.integers(stream.n_rows)))
    length = self.seq_len
    positions = np.arange(length, dtype=np.int32)
    langs = np.full(length, self.lang2id[spec.langs[0]], np.int32)
    segments = np.ones(length, np.int32)
    return tokens, positions, langs, segments

  def _objective_row(self, obj: ObjectiveData, spec: StepSpec, rng: np.random.Generator, masking: MaskingConfig):
    tokens, positions, langs, segments = self._stream_row(spec, rng)
    if obj.objective == "mlm":
      inputs, index, targets, weights = mask_row(rng, tokens, segments > 0, masking, obj.n_slots, self.token_scores)
    else:
      inputs, index, targets, weights = clm_row(tokens, segments)
    return inputs, positions, langs, segments, index, targets, weights

  def batch(self, step: int) -> dict[str, dict[str, np.ndarray]]:
    """This process's rows of the batch of `step`."""
    out = {}
    first = self.process_index * self.local_batch_size
    for k, obj in enumerate(self.objectives_at(step)):
      salt = OBJECTIVES.index(obj.objective)
      step_spec = None
      if self.mixing == "separate":
        step_spec = obj.specs[row_rng(self.seed, step, -1 % (1 << 32), salt).choice(len(obj.specs), p=obj.probs)]
      rows = []
      for r in range(first, first + self.local_batch_size):
        rng = row_rng(self.seed, step, r, salt)
        spec = step_spec or obj.specs[rng.choice(len(obj.specs), p=obj.probs)]
        rows.append(self._objective_row(obj, spec, rng, self.masking))
      out[obj.objective] = {name: np.stack([row[i] for row in rows]) for i, name in enumerate(FIELDS)}
    return out

  def eval_batches(self, streams: Mapping[str, TokenStream], max_rows: int) -> dict[str, list[dict]]:
    """Held-out batches per `objective_language`: the first `max_rows` rows of each stream, deterministic masks
    (fixed seed, 100% <mask>), padded with weight-0 rows to whole batches. This process's rows only."""
    eval_masking = dataclasses.replace(self.masking, mask_keep_rand=(1.0, 0.0, 0.0))
    result = {}
    for obj in self.objectives:
      for spec in obj.specs:
        stream = streams.get(spec.langs[0])
        if stream is None or stream.n_rows == 0:
          continue
        n = min(stream.n_rows, max_rows)
        rows = []
        for c in range(n):
          rng = row_rng(12345, c, 0, OBJECTIVES.index(obj.objective))
          tokens = stream.row(c)
          segments = np.ones(self.seq_len, np.int32)
          if obj.objective == "mlm":
            masked = mask_row(rng, tokens, segments > 0, eval_masking, obj.n_slots, self.token_scores)
          else:
            masked = clm_row(tokens, segments)
          inputs, index, targets, weights = masked
          rows.append((inputs, np.arange(self.seq_len, dtype=np.int32),
                       np.full(self.seq_len, self.lang2id[spec.langs[0]], np.int32), segments, index, targets,
                       weights))
        result[f"{obj.objective}_{spec.name}"] = self._to_batches(rows)
    return result

  def _to_batches(self, rows: list) -> list[dict]:
    batches = []
    b, local = self.batch_size, self.local_batch_size
    for start in range(0, len(rows), b):
      chunk = rows[start:start + b]
      while len(chunk) < b:  # fill with a weight-0 copy so shapes stay fixed
        inputs, pos, langs, seg, index, targets, weights = chunk[0]
        chunk.append((inputs, pos, langs, seg, index, targets, np.zeros_like(weights)))
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
