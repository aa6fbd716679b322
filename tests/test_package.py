"""xlm_jax is a real package: `pip install` works from a clean copy, `import xlm_jax` works from any directory,
the wheel holds only `xlm_jax` (no stray top-level packages), and the `xlm-jax` console command runs.

The install goes into a `--target` folder without dependencies or build isolation (they are in this venv already,
and tests never download anything); the fresh-venv `pip install -e .` is checked in the README's CI command.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

from conftest import ROOT


def _clean_copy(dest: str) -> str:
  """The files a clean clone has that the build reads (no __pycache__, no egg-info, no build/)."""
  src = os.path.join(dest, "src")
  os.makedirs(src)
  for name in ("pyproject.toml", "README.md", "LICENSE"):
    shutil.copy(os.path.join(ROOT, name), src)
  shutil.copytree(os.path.join(ROOT, "xlm_jax"), os.path.join(src, "xlm_jax"),
                  ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  return src


def test_pip_install_import_anywhere_and_console_command(tmp_path):
  src = _clean_copy(str(tmp_path))
  site = tmp_path / "site"
  build = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                          "--quiet", "--target", str(site), src], capture_output=True, text=True, timeout=300)
  assert build.returncode == 0, build.stderr[-3000:]
  top_level = sorted(p for p in os.listdir(site) if not p.endswith(".dist-info") and p != "bin")
  assert top_level == ["xlm_jax"], top_level
  entry_points = open(next(site.glob("xlm_jax-*.dist-info")) / "entry_points.txt").read()
  assert "xlm-jax = xlm_jax.cli:main" in entry_points

  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env["PYTHONPATH"] = str(site)
  imported = subprocess.run([sys.executable, "-c", "import xlm_jax; print(xlm_jax.__file__, xlm_jax.__version__)"],
                            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
  assert imported.returncode == 0, imported.stderr[-2000:]
  assert imported.stdout.startswith(str(site)), imported.stdout  # the installed copy, not the repository

  command = [sys.executable, str(site / "bin" / "xlm-jax")]
  helped = subprocess.run([*command, "--help"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
  assert helped.returncode == 0, helped.stderr[-2000:]
  for sub in ("train", "translate", "convert", "evaluate", "report"):
    assert f"  {sub} " in helped.stdout, helped.stdout
  # config files load by path, the sibling import in configs/nmt.py included, without the repository on sys.path
  shown = subprocess.run([*command, "train", f"--config={ROOT}/configs/nmt.py:multi30k", "--print_config",
                          "--config.train.steps=7"], cwd=elsewhere, env=env, capture_output=True, text=True,
                         timeout=120)
  assert shown.returncode == 0, shown.stderr[-2000:]
  assert "task: nmt" in shown.stdout and "steps: 7" in shown.stdout, shown.stdout[:2000]
  assert not (elsewhere / "checkpoints").exists() and os.listdir(elsewhere) == []
  wrong = subprocess.run([*command, "trian"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
  assert wrong.returncode == 2 and "error: unknown command 'trian'" in wrong.stderr, wrong.stderr


def test_provenance_marks_code_changes_dirty_but_not_benchmark_outputs(tmp_path):
  """A figure of uncommitted code says so (+dirty); a results JSON or a rendered doc rewritten by an earlier run
  of the same script sequence does not count as a code change."""
  import subprocess
  from xlm_jax.provenance import git_commit
  run = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)
  run("init", "-q")
  for rel in ("code.py", "benchmarks/results/r.json", "docs/results.md"):
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_text("0\n")
  run("add", "-A")
  run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
  head = git_commit(str(tmp_path))
  assert head and not head.endswith("+dirty")
  (tmp_path / "benchmarks/results/r.json").write_text("1\n")
  (tmp_path / "docs/results.md").write_text("1\n")
  assert git_commit(str(tmp_path)) == head
  (tmp_path / "code.py").write_text("1\n")
  assert git_commit(str(tmp_path)) == head + "+dirty"
