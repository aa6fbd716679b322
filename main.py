"""xlm_jax command line: `python main.py --config=configs/<family>.py[:variant] --workdir=DIR [--config.x=y]`.

Kept thin on purpose: the same as `xlm-jax train ...` (flags, distributed start-up, dispatch on `config.task`,
all in `xlm_jax.cli`). Re-running the same command on the same workdir resumes from the newest complete
checkpoint; `--print_config` shows every config field and its value.
"""
import sys

from xlm_jax.cli import train_main

if __name__ == "__main__":
  sys.exit(train_main(sys.argv))
