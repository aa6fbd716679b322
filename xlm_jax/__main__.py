"""`python -m xlm_jax <command> ...` is the `xlm-jax` command (for a checkout that is not pip-installed)."""
import sys

from xlm_jax.cli import main

sys.exit(main([*sys.argv]))
