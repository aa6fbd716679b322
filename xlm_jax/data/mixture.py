"""The batches of every task: a mixture of row sources per batch key, built per step and row group.

Batch layout (numpy, this process's rows only; the loop assembles the global array): `batch[key] = fields`, one
entry per batch key of the step. Keys and their builders (`rows.py`):

  pretraining  'mlm' (StreamRows + MLM masking), 'tlm' (TlmRows + MLM masking), 'clm' (StreamRows + next token)
    tokens, positions, langs, segment_ids  int32 [B, L]   model input (MLM/TLM: after masking)
    pred_index, pred_targets int32 [B, P], pred_weights f32 [B, P]
  NMT          'mt', 'ae' (TranslationRows), 'bt' (BtRows): see rows.py for their fields

Step specs use the reference's syntax: pretraining `mlm_steps='en,fr,en-fr'` (MLM on en and fr streams, TLM on
en-fr pairs), `clm_steps='en'`; NMT `mt_steps='en-fr'`, `ae_steps='en'`, `bt_steps='en-fr-en'`. Within each
batch key, a group of rows picks its entry with p ~ n**lg_sampling_factor (n = sentences or pairs).

Determinism and resume: rows are built in groups of `group_rows` (packed together; one entry per group), and
group g of step s is a pure function of (seed, s, g, key): a resumed run sees exactly the batches an uninterrupted
run sees, whatever the number of processes or input workers; each process builds (and reads the data of) its own
groups only. The state a checkpoint needs is the next step plus a fingerprint of the data settings.

Mixing objectives (`mixing`):
- "shared": every step has one batch of `batch_size` rows per key; the losses are summed into one update.
- "separate" (the reference's way): step s trains one key alone (they take turns), all rows of the step from
  one entry drawn with the same probabilities.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from xlm_jax.data.masking import MaskingConfig, apply_masking, clm_rows, mask_draws, mlm_slots
from xlm_jax.errors import UserError

KEYS = ("clm", "mlm", "tlm", "ae", "bt", "mt", "cls")  # the order of keys in a batch; the index salts the RNG
EVAL_SEED = 12345
BUILT_IN_KEYS = ("mt", "ae", "bt")  # rows whose builder makes their own targets
VERSION = "rows-3"  # part of the fingerprint: bump when the rows of a (seed, step) change


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """One entry of a step string: an objective on one language (`'en'`), a pair (`'en-fr'`) or, for
  back-translation, `'en-fr-en'`."""

  objective: str
  langs: tuple[str, ...]

  @property
  def name(self) -> str:
    return "-".join(self.langs)

  @property
  def key(self) -> str:
    """The batch key: monolingual MLM -> 'mlm', MLM on a pair (TLM) -> 'tlm'; otherwise the objective."""
    return "tlm" if self.objective == "mlm" and len(self.langs) == 2 else self.objective


def parse_steps(text: str, objective: str) -> list[StepSpec]:
  """Parse a reference-style pretraining step string: `'en,fr,en-fr'` -> [(en), (fr), (en, fr)]."""
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


def parse_nmt_steps(mt: str, ae: str, bt: str) -> list[StepSpec]:
  """`mt_steps` ('en-fr': translate en into fr), `ae_steps` ('en': denoise), `bt_steps` ('en-fr-en')."""
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
      specs.append(StepSpec(key, langs))
  if len(set(specs)) != len(specs):
    raise UserError("a step spec appears twice in mt_steps/ae_steps/bt_steps.")
  if not specs:
    raise UserError("no NMT steps: set config.nmt.mt_steps, ae_steps and/or bt_steps.")
  return specs


def sampling_probs(sizes: Sequence[int], factor: float) -> np.ndarray:
  """p ~ n**factor over the entries (factor -1 = uniform, the reference's default; 1 = proportional)."""
  n = np.asarray(sizes, np.float64)
  if factor < 0:
    return np.full(len(n), 1.0 / len(n))
  p = (n / n.sum()) ** factor
  return p / p.sum()


def row_rng(seed: int, step: int, group: int, salt: int) -> np.random.Generator:
  """The generator of one row group: Philox keyed by (seed, salt, step, group), each in 32 bits (counter-based:
  distinct keys give independent streams, and a key costs less to set up than hashing a seed sequence)."""
  mask = 0xFFFFFFFF
  key = [((seed & mask) << 32) | (salt & mask), ((step & mask) << 32) | (group & mask)]
  return np.random.Generator(np.random.Philox(key=key))


class RowSource(Protocol):
  """See rows.py."""

  size: int

  def rows(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    ...

  def eval_rows(self, max_rows: int) -> dict[str, np.ndarray]:
    ...


@dataclasses.dataclass(frozen=True)
class MaskTargets:
  """MLM/TLM: mask the group's rows (80/10/10; frequency-smoothed with `token_scores`); held-out rows: 100%."""

  masking: MaskingConfig
  n_slots: int
  token_scores: np.ndarray | None = None

  def draw(self, rng: np.random.Generator, shape: tuple[int, int]) -> dict:
    return mask_draws(rng, *shape, self.n_slots)

  def apply(self, rows: dict, draws: dict, train: bool = True) -> dict:
    cfg = self.masking if train else dataclasses.replace(self.masking, mask_keep_rand=(1.0, 0.0, 0.0))
    inputs, index, targets, weights = apply_masking(draws, rows["tokens"], rows["segment_ids"] > 0, cfg,
                                                    self.n_slots, self.token_scores)
    return {**rows, "tokens": inputs, "pred_index": index, "pred_targets": targets, "pred_weights": weights}

  def describe(self) -> dict:
    return {"masking": dataclasses.asdict(self.masking), "slots": self.n_slots,
            "scores": None if self.token_scores is None else hashlib.sha256(
                np.ascontiguousarray(self.token_scores).tobytes()).hexdigest()[:16]}


@dataclasses.dataclass(frozen=True)
class NextTokenTargets:
  """CLM: position t predicts t+1 inside a segment."""

  def draw(self, rng: np.random.Generator, shape: tuple[int, int]) -> dict:
    return {}

  def apply(self, rows: dict, draws: dict, train: bool = True) -> dict:
    _, index, targets, weights = clm_rows(rows["tokens"], rows["segment_ids"])
    return {**rows, "pred_index": index, "pred_targets": targets, "pred_weights": weights}

  def describe(self) -> dict:
    return {"targets": "next token"}


@dataclasses.dataclass(frozen=True)
class BuiltIn:
  """Rows whose builder already made their targets (MT, denoising, back-translation sources)."""

  def draw(self, rng: np.random.Generator, shape: tuple[int, int]) -> dict:
    return {}

  def apply(self, rows: dict, draws: dict, train: bool = True) -> dict:
    return rows

  def describe(self) -> dict:
    return {"targets": "built in"}


def mlm_targets(masking: MaskingConfig, length: int, token_scores: np.ndarray | None = None) -> MaskTargets:
  return MaskTargets(masking, mlm_slots(length, masking.word_pred), token_scores)


@dataclasses.dataclass(frozen=True)
class Entry:
  """One step spec with its row source."""

  spec: StepSpec
  source: Any  # RowSource


@dataclasses.dataclass
class Objective:
  """The entries of one batch key, their sampling probabilities and what turns their rows into training rows."""

  key: str
  entries: list[Entry]
  probs: np.ndarray
  targets: Any  # .draw(rng, rows) per group -> random numbers; .apply(rows, draws, train) over all groups


def objectives(entries: Sequence[Entry], targets: Mapping[str, Any], lg_sampling_factor: float
               ) -> list[Objective]:
  """Group entries by batch key (in `KEYS` order) with p ~ size**lg_sampling_factor."""
  out = []
  for key in KEYS:
    mine = [e for e in entries if e.spec.key == key]
    if mine:
      out.append(Objective(key, mine, sampling_probs([e.source.size for e in mine], lg_sampling_factor),
                           targets[key]))
  return out


def stack(parts: Sequence[dict]) -> dict[str, np.ndarray]:
  if len(parts) == 1:
    return dict(parts[0])
  return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _placed(values: np.ndarray, order: np.ndarray) -> np.ndarray:
  """out[order[i]] = values[i]."""
  out = np.empty_like(values)
  out[order] = values
  return out


class Mixture:
  """Builds this process's rows of the batch of any step (see the module docstring)."""

  def __init__(self, objectives: Sequence[Objective], *, batch_size: int, seed: int, mixing: str = "shared",
               process_index: int = 0, process_count: int = 1, group_rows: int = 8,
               settings: Mapping | None = None):
    if mixing not in ("shared", "separate"):
      raise UserError(f"config.data.mixing={mixing!r} must be 'shared' or 'separate'.")
    if not objectives:
      raise UserError("no training steps: set the step specs (config.data.mlm_steps / clm_steps, config.nmt.*).")
    if batch_size % process_count:
      raise UserError(f"batch_size {batch_size} is not divisible by the {process_count} processes.")
    if (batch_size // process_count) % group_rows:
      raise UserError(f"each process builds {batch_size // process_count} rows, not a multiple of "
                      f"config.data.pack_rows={group_rows} (rows packed together); change one of them.")
    self.objectives = list(objectives)
    self.batch_size, self.seed, self.mixing, self.group_rows = batch_size, seed, mixing, group_rows
    self.process_index, self.process_count = process_index, process_count
    self.settings = dict(settings or {})

  @property
  def local_batch_size(self) -> int:
    return self.batch_size // self.process_count

  def fingerprint(self) -> str:
    desc = {"version": VERSION, "seed": self.seed, "batch": self.batch_size, "mixing": self.mixing,
            "group": self.group_rows, "settings": self.settings,
            "objectives": [(o.key, [e.spec.name for e in o.entries], [e.source.size for e in o.entries],
                            o.probs.round(8).tolist(), o.targets.describe()) for o in self.objectives]}
    return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()[:16]

  def objectives_at(self, step: int) -> list[Objective]:
    if self.mixing == "shared":
      return self.objectives
    return [self.objectives[step % len(self.objectives)]]

  def groups(self) -> range:
    """The row groups this process builds."""
    first = self.process_index * self.local_batch_size
    return range(first // self.group_rows, (first + self.local_batch_size) // self.group_rows)

  def batch(self, step: int) -> dict[str, dict[str, np.ndarray]]:
    """This process's rows of the batch of `step`."""
    out = {}
    for obj in self.objectives_at(step):
      salt = KEYS.index(obj.key)
      step_entry = None
      if self.mixing == "separate":
        step_entry = obj.entries[row_rng(self.seed, step, (1 << 32) - 1, salt).choice(len(obj.entries), p=obj.probs)]
      out[obj.key] = self._rows(obj, step, salt, step_entry)
    return out

  def _rows(self, obj: Objective, step: int, salt: int, step_entry: Entry | None) -> dict[str, np.ndarray]:
    """The rows of one batch key: per group (a pure function of the group), the entry, the builder's plan (its
    random draws and packing decisions) and the targets' random numbers; then each builder builds the rows of all
    its groups at once, and the targets are made once for all rows."""
    n, cdf = self.group_rows, np.cumsum(obj.probs)
    plans: dict[int, list] = {}  # entry -> [(group position, plan)]
    draws = []
    for at, g in enumerate(self.groups()):
      rng = row_rng(self.seed, step, g, salt)
      e = obj.entries.index(step_entry) if step_entry is not None else \
          min(int(cdf.searchsorted(rng.random() * cdf[-1], side="right")), len(obj.entries) - 1)
      source = obj.entries[e].source
      plan = source.plan(rng, n) if hasattr(source, "plan") else source.rows(rng, n)
      plans.setdefault(e, []).append((at, plan))
      draws.append(obj.targets.draw(rng, (n, getattr(source, "length", 0))))
    blocks, where = [], []
    for e, mine in plans.items():
      source = obj.entries[e].source
      if hasattr(source, "build"):
        blocks.append(source.build([plan for _, plan in mine], n))
      else:
        blocks.append(stack([plan for _, plan in mine]))
      where.extend(at for at, _ in mine)
    rows = stack(blocks)
    if where != sorted(where):  # rows of several builders: back into group order
      order = (np.asarray(where)[:, None] * n + np.arange(n)).ravel()
      rows = {name: _placed(v, order) for name, v in rows.items()}
    return obj.targets.apply(rows, stack(draws) if draws[0] else {})

  def eval_batches(self, entries: Sequence[Entry], max_rows: int) -> dict[str, list[dict]]:
    """Held-out batches per `<key>_<spec>`: the first `max_rows` rows of each entry, deterministic targets (fixed
    seed; MLM: 100% <mask>, as the reference's evaluator), padded with weight-0 rows to whole batches. This
    process's rows only; each batch is `{key: fields}`."""
    targets = {o.key: o.targets for o in self.objectives}
    result = {}
    for entry in entries:
      key = entry.spec.key
      rows = entry.source.eval_rows(max_rows)
      n = len(next(iter(rows.values())))
      if n == 0:
        continue
      target = targets.get(key)
      if target is None:  # held-out MT of an unsupervised run (no 'mt' objective): its rows carry their targets
        if key not in BUILT_IN_KEYS:
          raise UserError(f"held-out entry {entry.spec.name!r} ({key}) has no training objective to take its "
                          "targets from; add it to the step specs.")
        target = BuiltIn()
      draws = target.draw(np.random.default_rng([EVAL_SEED, KEYS.index(key)]), (n, getattr(entry.source, "length", 0)))
      rows = target.apply(rows, draws, train=False)
      result[f"{key}_{entry.spec.name}"] = [{key: b} for b in self._to_batches(rows, n)]
    return result

  def _to_batches(self, rows: dict, n: int) -> list[dict]:
    b, local = self.batch_size, self.local_batch_size
    mine = slice(self.process_index * local, (self.process_index + 1) * local)
    batches = []
    for start in range(0, n, b):
      slot = np.arange(start, start + b)
      take = np.where(slot < n, slot, start)[mine]  # rows past the end: weight-0 copies, so shapes stay fixed
      chunk = {name: v[take] for name, v in rows.items()}
      chunk["pred_weights"] = chunk["pred_weights"] * (slot[mine] < n)[:, None].astype(np.float32)
      batches.append(chunk)
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
