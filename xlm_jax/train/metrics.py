"""Where metrics go: `metrics.jsonl`, TensorBoard event files, a progress bar with ETA, and console lines.

Only process 0 writes; other processes get a writer that does nothing. Values are plain floats; a value that is a
string (a sample translation, masked words filled in) is text: TensorBoard text and a `kind: text` JSONL record.

At the start of a run `start(config, info)` writes the resolved config to `WORKDIR/config.json`, as TensorBoard
hparams (every field, dotted) and as a `kind: start` JSONL record with `info` (parameters, devices, mesh).
`xlm_jax.report.read_metrics` reads the JSONL file back.
"""
from __future__ import annotations

import json
import math
import sys
import time
from typing import Any, Mapping

import jax

from xlm_jax import paths


class MetricsWriter:
  def __init__(self, workdir: str, total_steps: int, start_step: int = 0, progress_bar: bool = True,
               enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._jsonl = None
    self._tb = None
    self._bar = None
    self._tb_mirror = None
    if not self.enabled:
      return
    paths.makedirs(workdir)
    self._jsonl = paths.AppendFile(paths.join(workdir, "metrics.jsonl"))
    try:
      from tensorboardX import SummaryWriter
      tb_dir = paths.join(workdir, "tensorboard")
      if paths.is_remote(workdir):  # event files are appended to: write them locally, upload on every flush
        local = paths.join(paths.data_cache_dir("", workdir), "tensorboard")
        self._tb_mirror = paths.Mirror(local, tb_dir)
        tb_dir = local
      self._tb = SummaryWriter(tb_dir)
    except ImportError:  # TensorBoard files are optional; the JSONL file is always written
      self._tb = None
    if progress_bar:
      from tqdm import tqdm
      self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, file=sys.stderr,
                       mininterval=1.0, smoothing=0.1, disable=None)

  def _flush_tb(self) -> None:
    self._tb.flush()
    if self._tb_mirror is not None:
      self._tb_mirror.sync()

  def _record(self, record: dict) -> None:
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()

  def start(self, config, info: Mapping[str, Any], workdir: str) -> None:
    """config.json, TensorBoard hparams and a `start` record; the config may be a ConfigDict or a dict."""
    if not self.enabled:
      return
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    with paths.path(paths.join(workdir, "config.json")).open("w") as f:
      json.dump(values, f, indent=1, sort_keys=True, default=str)
    self._record({"step": int(info.get("step", 0)), "kind": "start", "time": time.time(), **info})
    if self._tb is not None:
      from tensorboardX.summary import hparams
      flat = {k: (v if isinstance(v, (bool, int, float, str)) else json.dumps(v, default=str))
              for k, v in flatten(values).items()}
      flat.update({f"run.{k}": v for k, v in info.items() if isinstance(v, (bool, int, float, str))})
      for summary in hparams(flat, {"eval/loss": 0.0, "train/loss": 0.0}):
        self._tb.file_writer.add_summary(summary)
      self._flush_tb()

  def write(self, step: int, metrics: Mapping[str, Any], prefix: str) -> None:
    """Scalars under `prefix/name`; string values go to `text` under the same tag."""
    if not self.enabled:
      return
    texts = {k: v for k, v in metrics.items() if isinstance(v, str)}
    # non-finite values are kept (JSON NaN/Infinity): a diverging run must show, not vanish from the record
    clean = {k: float(v) for k, v in metrics.items() if k not in texts and v is not None}
    self._record({"step": int(step), "kind": prefix, "time": time.time(), **clean})
    if self._tb is not None:
      for k, v in clean.items():
        self._tb.add_scalar(f"{prefix}/{k}", v, step)
      self._flush_tb()
    for k, v in texts.items():
      self.text(step, f"{prefix}/{k}", v)

  def text(self, step: int, tag: str, text: str) -> None:
    """A text sample (TensorBoard's text tab renders it as markdown) and a `kind: text` JSONL record."""
    if not self.enabled:
      return
    self._record({"step": int(step), "kind": "text", "time": time.time(), "tag": tag, "text": text})
    if self._tb is not None:
      self._tb.add_text(tag, text, step)
      self._flush_tb()

  def progress(self, n: int = 1, **postfix) -> None:
    if self._bar is not None:
      self._bar.update(n)
      if postfix:
        self._bar.set_postfix({k: _short(v) for k, v in postfix.items()}, refresh=False)

  def log(self, message: str) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(message, file=sys.stderr)
    else:
      print(message, file=sys.stderr, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
    if self._tb is not None:
      self._tb.close()
      if self._tb_mirror is not None:
        self._tb_mirror.sync()
    if self._jsonl is not None:
      self._jsonl.close()


def _short(v) -> str:
  v = float(v)
  if v == 0 or (1e-3 <= abs(v) < 1e5):
    return f"{v:.4g}"
  return f"{v:.2e}"


def format_metrics(metrics: Mapping[str, float], keys: list[str] | None = None) -> str:
  keys = keys or sorted(metrics)
  return " ".join(f"{k}={_short(metrics[k])}" for k in keys
                  if k in metrics and not isinstance(metrics[k], str) and math.isfinite(float(metrics[k])))


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}: config fields as the command line spells them."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


class Profiler:
  """`config.log.profile_steps = 'START:STOP'` records a `jax.profiler` trace of steps START..STOP-1 into
  `WORKDIR/profile` (open it with TensorBoard's profile plugin or Perfetto); '' records nothing.

  The trap: steps are dispatched asynchronously, so `stop` waits for the last traced step's outputs before it
  closes the trace, or the trace would hold only the dispatch.
  """

  def __init__(self, spec: str, workdir: str):
    self.start_step = self.stop_step = -1
    self.directory = paths.join(workdir, "profile")
    self.active = False
    if spec:
      try:
        start, stop = (int(x) for x in str(spec).split(":"))
      except ValueError:
        from xlm_jax.errors import UserError
        raise UserError(f"config.log.profile_steps={spec!r}: write START:STOP, e.g. '10:15' (steps 10 to 14).")
      if not 0 <= start < stop:
        from xlm_jax.errors import UserError
        raise UserError(f"config.log.profile_steps={spec!r}: need 0 <= START < STOP.")
      self.start_step, self.stop_step = start, stop

  def before(self, step: int) -> None:
    if step == self.start_step and not self.active:
      jax.profiler.start_trace(self.directory)
      self.active = True

  def after(self, step: int, outputs) -> bool:
    """Call after dispatching step `step`; True when the trace was closed (the file is written)."""
    if self.active and step + 1 >= self.stop_step:
      jax.block_until_ready(outputs)
      jax.profiler.stop_trace()
      self.active = False
      return True
    return False

  def close(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
