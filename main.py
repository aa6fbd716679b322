"""xlm_jax command line: `python main.py --config=configs/<family>.py[:variant] --workdir=DIR [--config.x=y]`.

Kept thin on purpose: flags, distributed start-up, dispatch on `config.task`. The work is in `xlm_jax`.
Re-running the same command on the same workdir resumes from the newest complete checkpoint.
"""
import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and prepared data.")
CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/demo.py or configs/demo.py:pretrain.",
                                         lock_config=True)


def main(argv):
  del argv
  from xlm_jax.cli import run_task
  sys.exit(run_task(CONFIG.value, FLAGS.value))


if __name__ == "__main__":
  from xlm_jax.cli import parse_flags
  app.run(main, flags_parser=parse_flags)
