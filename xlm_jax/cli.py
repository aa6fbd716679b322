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


def enable_compilation_cache(directory: str) -> None:
  """Keep compiled XLA programs on disk so that a resumed or repeated run does not compile again."""
  if not directory:
    return
  import jax
  jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def run_task(config, workdir: str | None) -> int:
  logging.getLogger("absl").setLevel(logging.WARNING)
  if not workdir:
    fail("--workdir is required.")
  workdir = os.path.abspath(os.path.expanduser(workdir))
  try:
    enable_compilation_cache(config.compilation_cache_dir)
    from xlm_jax import parallel
    parallel.initialize_distributed(config.distributed.coordinator, config.distributed.num_processes,
                                    config.distributed.process_id, config.distributed.timeout_s)
    if config.task == "pretrain":
      from xlm_jax.train import pretrain
      pretrain.run(config, workdir)
    elif config.task == "nmt":
      from xlm_jax.train import nmt
      nmt.run(config, workdir)
    elif config.task == "demo":
      from xlm_jax import demo
      demo.run(config, workdir)
    else:
      raise UserError(f"config.task={config.task!r} is not one of {TASKS}.")
  except UserError as e:
    fail(str(e))
  return 0
