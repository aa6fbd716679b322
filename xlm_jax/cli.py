"""What `main.py` runs: friendly flag parsing, distributed start-up, dispatch on `config.task`, clean errors.

A `UserError` (or a bad flag) prints one line `error: ...` on stderr and exits with status 2; nothing is written
to the workdir before the checks that can fail have passed.
"""
from __future__ import annotations

import logging
import os
import sys

from absl import flags

from xlm_jax.errors import UserError

TASKS = ("pretrain", "demo", "nmt", "classify")


def fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing that turns a mistyped config field or a bad value into one readable line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e))
  except (AttributeError, KeyError) as e:
    bad = [a for a in argv if a.startswith("--config.")]
    detail = str(e.args[0] if e.args else e).strip("'\"").replace("\\n", " ").replace("\n", " ")
    fail(f"unknown config field in {' '.join(bad) or 'the command line'}: {detail}")
  except (OSError, IOError) as e:
    fail(f"could not read the config file: {e}")
  return argv


def run_task(config, workdir: str | None) -> int:
  logging.getLogger("absl").setLevel(logging.WARNING)
  if not workdir:
    fail("--workdir is required.")
  workdir = os.path.abspath(os.path.expanduser(workdir))
  try:
    from xlm_jax import parallel
    parallel.maybe_initialize_distributed(config.distributed.coordinator, config.distributed.num_processes,
                                          config.distributed.process_id)
    if config.task == "pretrain":
      from xlm_jax.train import pretrain
      pretrain.run(config, workdir)
    elif config.task == "demo":
      from xlm_jax import demo
      demo.run(config, workdir)
    else:
      raise UserError(f"config.task={config.task!r} is not one of {TASKS}.")
  except UserError as e:
    fail(str(e))
  return 0
