"""Shared fixtures: tiny configs that compile fast, and a way to run main.py in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # on sys.path through pyproject's pythonpath

FULL = os.environ.get("XLM_JAX_FULL_TESTS") == "1"

# One persistent XLA compilation cache for the whole test session (in-process and subprocesses): the many small
# runs of the same shapes compile once.
JIT_CACHE = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, ".pytest_cache", "jit"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def tiny_config(**overrides):
  """The demo config shrunk to seconds: 2 small layers, short rows, a small generated corpus."""
  from configs.demo import get_config
  from xlm_jax.config_base import override
  c = get_config("pretrain")
  c.data.generated_sizes.n_mono = 2000
  c.data.generated_sizes.n_para = 1000
  c.data.generated_sizes.n_valid = 100
  c.data.generated_sizes.n_test = 100
  c.data.vocab_size = 300
  c.data.bptt = 32
  c.data.batch_size = 8
  c.data.eval_rows = 16
  c.model.emb_dim = 32
  c.model.n_layers = 2
  c.model.n_heads = 4
  c.model.dtype = "float32"
  c.train.steps = 20
  c.train.warmup_steps = 5
  c.checkpoint.every = 10
  c.checkpoint.async_save = False
  c.log.every = 10
  c.log.eval_every = 0
  c.log.progress_bar = False
  c.log.peak_flops = 1e11
  c.compilation_cache_dir = JIT_CACHE
  override(c, overrides)
  return c


def config_flags_for(overrides: dict) -> list[str]:
  return [f"--config.{k}={v}" for k, v in overrides.items()]


TINY_FLAGS = {
    "task": "pretrain", "data.generated_sizes.n_mono": 2000, "data.generated_sizes.n_para": 1000,
    "data.generated_sizes.n_valid": 100, "data.generated_sizes.n_test": 100, "data.vocab_size": 300,
    "data.bptt": 32, "data.batch_size": 8, "data.eval_rows": 16, "model.emb_dim": 32, "model.n_layers": 2,
    "model.n_heads": 4, "model.dtype": "float32", "train.steps": 20, "train.warmup_steps": 5,
    "checkpoint.every": 10, "log.every": 10, "log.eval_every": 0, "log.progress_bar": False,
    "log.peak_flops": 1e11, "compilation_cache_dir": JIT_CACHE,
    "data.workers": 0,  # batches built in a thread: no worker start-up per test run (test_resume uses workers)
}


def run_main(workdir: str, overrides: dict | None = None, extra_env: dict | None = None, config="configs/demo.py",
             timeout: int = 600, tiny: bool = True, **popen) -> subprocess.CompletedProcess:
  """Run main.py in a subprocess; `tiny` shrinks the config to seconds (TINY_FLAGS), then `overrides` apply."""
  flags = {**(TINY_FLAGS if tiny else {"compilation_cache_dir": JIT_CACHE}), **(overrides or {})}
  cmd = [sys.executable, os.path.join(ROOT, "main.py"), f"--config={os.path.join(ROOT, config)}",
         f"--workdir={workdir}", *config_flags_for(flags)]
  env = {**os.environ, "PYTHONPATH": ROOT, **(extra_env or {})}
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, **popen)


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
  """A small generated corpus, shared by the tests of a session."""
  from xlm_jax.data import synthetic
  out = tmp_path_factory.mktemp("corpus")
  synthetic.generate_corpus(out, seed=0, n_mono=2000, n_para=1000, n_valid=100, n_test=100)
  return str(out)


TINY_DEMO = {"task": "demo", "train.steps": 20, "log.every": 10, "log.eval_every": 10, "checkpoint.every": 10,
             "log.profile_steps": "12:14", "demo.nmt_steps": 10, "demo.nmt_batch_size": 8, "nmt.bleu_sentences": 8,
             "nmt.src_len": 32, "nmt.tgt_len": 32, "nmt.sample_translations": 1}


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
  """The demo chain shrunk to seconds, through main.py in a subprocess (so its console output is the real
  start-up): pretraining evaluated at steps 10 and 20 with steps 12-13 profiled, then 10 NMT steps.
  Returns (workdir, completed process)."""
  workdir = tmp_path_factory.mktemp("tiny_demo") / "run"
  proc = run_main(str(workdir), TINY_DEMO, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc
