"""Bad input stops the run before training with one clear sentence, a non-zero exit, and an untouched workdir."""
import os
import shutil

import pytest

from conftest import run_main


def snapshot(directory):
  """Every file under `directory` with its size and modification time."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      st = os.stat(path)
      out[os.path.relpath(path, directory)] = (st.st_size, st.st_mtime_ns)
  return out


def one_error_line(proc):
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert len(lines) == 1, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  return lines[0]


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("trained")
  proc = run_main(str(workdir), {"train.steps": 10})
  assert proc.returncode == 0, proc.stderr[-2000:]
  return workdir


def test_workdir_with_a_different_model_is_refused_and_untouched(trained_workdir):
  before = snapshot(trained_workdir)
  proc = run_main(str(trained_workdir), {"train.steps": 20, "model.emb_dim": 64})
  line = one_error_line(proc)
  assert "different model" in line and "emb_dim" in line and "32" in line and "64" in line
  assert snapshot(trained_workdir) == before


def test_unknown_language_code(tmp_path):
  proc = run_main(str(tmp_path / "w"), {"data.languages": "xa,zz", "data.mlm_steps": "xa,zz"})
  line = one_error_line(proc)
  assert "'zz'" in line


def test_mistyped_config_field(tmp_path):
  proc = run_main(str(tmp_path / "w"), {"model.emd_dim": 64})
  line = one_error_line(proc)
  assert "emd_dim" in line and "emb_dim" in line
  assert not (tmp_path / "w").exists()


def make_folder(tmp_path, corpus_dir, drop=None, empty=None):
  folder = tmp_path / "corpus"
  folder.mkdir()
  for lang in ("xa", "xb"):
    for split in ("train", "valid"):
      name = f"{split}.{lang}"
      if name == drop:
        continue
      if name == empty:
        (folder / name).write_text("")
      else:
        shutil.copy(os.path.join(corpus_dir, name), folder / name)
  return folder


def test_missing_corpus_file(tmp_path, corpus_dir):
  folder = make_folder(tmp_path, corpus_dir, drop="valid.xb")
  proc = run_main(str(tmp_path / "w"), {"data.corpus": str(folder), "data.languages": "xa,xb",
                                        "data.mlm_steps": "xa,xb"})
  line = one_error_line(proc)
  assert "valid.xb" in line and str(folder) in line
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_empty_corpus_file(tmp_path, corpus_dir):
  folder = make_folder(tmp_path, corpus_dir, empty="train.xa")
  proc = run_main(str(tmp_path / "w"), {"data.corpus": str(folder), "data.languages": "xa,xb",
                                        "data.mlm_steps": "xa,xb"})
  line = one_error_line(proc)
  assert "train.xa" in line and "empty" in line
