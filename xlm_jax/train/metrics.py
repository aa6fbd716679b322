"""Where metrics go: `metrics.jsonl`, TensorBoard event files, a progress bar with ETA, and console lines.

Only process 0 writes; other processes get a writer that does nothing. Values are plain floats.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Mapping

import jax
import numpy as np


class MetricsWriter:
  def __init__(self, workdir: str, total_steps: int, start_step: int = 0, progress_bar: bool = True,
               enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._jsonl = None
    self._tb = None
    self._bar = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    except ImportError:  # TensorBoard files are optional; the JSONL file is always written
      self._tb = None
    if progress_bar:
      from tqdm import tqdm
      self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, file=sys.stderr,
                       mininterval=1.0, smoothing=0.1, disable=None)

  def write(self, step: int, metrics: Mapping[str, float], prefix: str) -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(float(v))}
    record = {"step": int(step), "kind": prefix, "time": time.time(), **clean}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in clean.items():
        self._tb.add_scalar(f"{prefix}/{k}", v, step)
      self._tb.flush()

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
    if self._jsonl is not None:
      self._jsonl.close()


def _short(v) -> str:
  v = float(v)
  if v == 0 or (1e-3 <= abs(v) < 1e5):
    return f"{v:.4g}"
  return f"{v:.2e}"


def format_metrics(metrics: Mapping[str, float], keys: list[str] | None = None) -> str:
  keys = keys or sorted(metrics)
  return " ".join(f"{k}={_short(metrics[k])}" for k in keys if k in metrics and math.isfinite(float(metrics[k])))
