"""The `xlm-jax` command and what `main.py` runs: friendly flag parsing, distributed start-up, dispatch on
`config.task`, clean errors.

    xlm-jax train --config=configs/demo.py --workdir=runs/demo [--config.x=y] [--print_config]
    xlm-jax translate --checkpoint runs/demo/nmt --src xa --tgt xb < in.txt > out.txt
    xlm-jax convert from-hf HF_DIR OUT_DIR
    xlm-jax evaluate runs/demo/nmt --src-file test.xa --tgt-file test.xb --src xa --tgt xb
    xlm-jax report runs/demo/pretrain

Each subcommand is a module with `main(argv) -> int` (`python -m xlm_jax.<module>` runs the same thing); `train`
is `main.py`. A `UserError` (or a bad flag) prints one line `error: ...` on stderr and exits with status 2; nothing
is written to the workdir before the checks that can fail have passed.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import tempfile
from typing import Sequence

from absl import flags

from xlm_jax.errors import UserError

TASKS = ("pretrain", "demo", "nmt", "classify")
# subcommand -> (module with main(argv), one line of help); modules that do not exist (yet) are not offered.
SUBCOMMANDS = {
    "train": ("xlm_jax.cli", "pretrain / nmt / classify / demo from a config file (what main.py does)"),
    "translate": ("xlm_jax.translate", "translate text with an NMT bundle, line by line"),
    "convert": ("xlm_jax.convert", "convert checkpoints from/to transformers and original XLM"),
    "evaluate": ("xlm_jax.evaluate_cli", "held-out scores of a bundle on parallel text files"),
    "report": ("xlm_jax.report", "text summary and PNG plots of a workdir"),
    "plan": ("xlm_jax.plan", "compile the train step for a topology and show memory per device"),
    "classify": ("xlm_jax.classify", "label sentences or sentence pairs (TSV on stdin) with a classifier bundle"),
    "retrieval": ("xlm_jax.retrieval", "cross-lingual retrieval accuracy of a bundle's embeddings, per layer"),
}


def fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing that turns a mistyped config field or a bad value into one readable line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    text = str(e)
    if "Traceback (most recent call last)" in text:  # the config file raised: keep its last line, not the trace
      head = text.split(":", 2)[:2]
      last = [line for line in text.strip().splitlines() if line.strip()][-1]
      fail(f"{':'.join(head)}: {last.split(': ', 1)[-1]}")
    fail(text)
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


def check_workdir(workdir: str) -> None:
  """Fail in one sentence when `workdir` cannot be a writable directory. Nothing is left behind: the probe
  directory made in the nearest existing ancestor is removed at once."""
  path = workdir
  while not os.path.exists(path):
    path = os.path.dirname(path)
  if not os.path.isdir(path):
    fail(f"--workdir={workdir} cannot be a directory: {path} is a file; choose another --workdir.")
  if not os.access(path, os.W_OK | os.X_OK):
    fail(f"--workdir={workdir} is not writable ({path} denies writing); choose another --workdir or fix the "
         "permissions.")
  # os.access says yes to root whatever the mode and knows nothing of file systems that refuse new entries
  # (/sys, a read-only bind mount): make one empty directory there and remove it again.
  try:
    probe = tempfile.mkdtemp(prefix=".xlm_jax-probe-", dir=path)
  except OSError as e:
    fail(f"--workdir={workdir} is not writable (creating a directory in {path} failed: {e.strerror}); choose "
         "another --workdir or fix the permissions.")
  os.rmdir(probe)


def quiet_logging() -> None:
  """Warnings and errors only: no absl/JAX INFO lines at start-up (libtpu probing on CPU machines, device counts).
  `--verbosity=0` (absl's flag) brings the INFO lines back."""
  verbosity = flags.FLAGS["verbosity"] if "verbosity" in flags.FLAGS else None
  if verbosity is not None and verbosity.present:
    return
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger().setLevel(logging.WARNING)
  logging.getLogger("absl").setLevel(logging.WARNING)


def run_task(config, workdir: str | None, print_config: bool = False) -> int:
  quiet_logging()
  if print_config:
    print(config)
    return 0
  if not workdir:
    fail("--workdir is required.")
  from xlm_jax import paths
  workdir = paths.resolve(workdir)  # gs://... stays a URL; local paths become absolute
  if not paths.is_remote(workdir):
    check_workdir(workdir)
  try:
    enable_compilation_cache(config.compilation_cache_dir)
    from xlm_jax import host_memory
    logging.info(host_memory.configure(config.host_malloc))
    from xlm_jax import parallel
    parallel.initialize_distributed(config.distributed.coordinator, config.distributed.num_processes,
                                    config.distributed.process_id, config.distributed.timeout_s)
    if config.task == "pretrain":
      from xlm_jax.train import pretrain
      pretrain.run(config, workdir)
    elif config.task == "nmt":
      from xlm_jax.train import nmt
      nmt.run(config, workdir)
    elif config.task == "classify":
      from xlm_jax.train import classify
      classify.run(config, workdir)
    elif config.task == "demo":
      from xlm_jax import demo
      demo.run(config, workdir)
    else:
      raise UserError(f"config.task={config.task!r} is not one of {TASKS}.")
  except UserError as e:
    fail(str(e))
  return 0


def _available(module: str) -> bool:
  return importlib.util.find_spec(module) is not None


def define_train_flags() -> None:
  """The flags of `train` (absl + ml_collections, as in the Flax examples); defining them twice is a no-op."""
  if "workdir" in flags.FLAGS:
    return
  from ml_collections import config_flags
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and prepared data.")
  flags.DEFINE_bool("print_config", False, "Print the resolved config (every field and its value) and exit.")
  config_flags.DEFINE_config_file(
      "config", None, "Config file, e.g. configs/demo.py or configs/demo.py:pretrain; override any field with "
      "--config.<field>=<value> (see --print_config for the fields).", lock_config=True)


def train_main(argv: Sequence[str]) -> int:
  """`xlm-jax train ...` and `python main.py ...`: parse absl flags and run `config.task`."""
  from absl import app
  define_train_flags()

  def run(_):
    try:
      config = flags.FLAGS.config
      config is None or config.task  # a config file that failed to load raises on first use
    except OSError as e:  # a config path that does not exist or does not import
      reason = str(e.__cause__ or e).strip().splitlines()[-1].strip()
      fail(f"--config: {reason}; pass a file of configs/, e.g. --config=configs/demo.py.")
    if config is None:
      fail("--config is required, e.g. --config=configs/demo.py.")
    sys.exit(run_task(flags.FLAGS.config, flags.FLAGS.workdir, flags.FLAGS.print_config))

  app.run(run, argv=list(argv), flags_parser=parse_flags)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """The `xlm-jax` console command: `xlm-jax <subcommand> [args]`."""
  argv = list(sys.argv if argv is None else argv)
  offered = {name: (module, text) for name, (module, text) in SUBCOMMANDS.items()
             if name == "train" or _available(module)}
  usage = "usage: xlm-jax <command> [args]   (xlm-jax <command> --help for its arguments)\n\ncommands:\n" + "\n".join(
      f"  {name:<10} {text}" for name, (_, text) in offered.items())
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(usage)
    return 0
  command, rest = argv[1], argv[2:]
  if command not in offered:
    print(usage, file=sys.stderr)
    fail(f"unknown command {command!r}; choose one of {', '.join(offered)}.")
  if command == "train":
    return train_main([f"xlm-jax {command}", *rest])
  module = importlib.import_module(offered[command][0])
  return int(module.main(rest) or 0)
