"""The path layer: `gs://bucket/x` survives every function that builds a workdir, checkpoint, metrics, tokenizer,
data or corpus path, and the writers work on a non-local file system.

The non-local file system here is fsspec's in-memory one registered under the `gs` protocol (epath's gs:// backend
is fsspec), so the exact gs:// code paths run offline. Orbax writes arrays through tensorstore's own GCS driver,
which this cannot redirect: checkpoints on gs:// are not exercised offline (see README, 'Cloud paths').
"""
import json
import os

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from xlm_jax import checkpoint as ckpt
from xlm_jax import paths
from xlm_jax.errors import UserError

URL = "gs://bucket/x"


@pytest.fixture
def memory_gcs(monkeypatch, tmp_path):
  """gs:// served by fsspec's memory file system (cleared before and after); the local cache in tmp_path."""
  monkeypatch.setattr(paths, "LOCAL_CACHE", str(tmp_path / "cache"))
  class MemoryGCS(MemoryFileSystem):
    protocol = ("gs", "gcs")
    root_marker = ""

    @classmethod
    def _strip_protocol(cls, path):
      path = str(path)
      for prefix in ("gs://", "gcs://"):
        if path.startswith(prefix):
          path = path[len(prefix):]
      return path.rstrip("/")

  MemoryGCS.store.clear()
  MemoryGCS.pseudo_dirs.clear()
  MemoryGCS.pseudo_dirs.append("")
  fsspec.register_implementation("gs", MemoryGCS, clobber=True)
  fsspec.config.conf.pop("gs", None)
  from etils.epath import backend
  monkeypatch.setattr(backend._FileSystemSpecBackend, "_get_filesystem", lambda self, name: MemoryGCS())
  yield MemoryGCS
  MemoryGCS.store.clear()


def test_urls_survive_every_path_function(tmp_path):
  assert paths.resolve(URL) == URL and paths.resolve(URL + "/") == URL
  assert paths.join(URL, "checkpoints", "12") == "gs://bucket/x/checkpoints/12"
  assert paths.join(URL + "/", "/metrics.jsonl") == "gs://bucket/x/metrics.jsonl"
  assert paths.dirname(URL + "/checkpoints") == URL and paths.basename(URL + "/checkpoints") == "checkpoints"
  assert paths.is_remote(URL) and not paths.is_remote(str(tmp_path)) and not paths.is_remote("file:///tmp/a")
  assert paths.resolve("file:///tmp/a") == "/tmp/a"
  assert paths.resolve("runs/a") == os.path.abspath("runs/a")  # local paths become absolute
  # prepared data of a remote workdir goes to a local cache named after it; a local workdir keeps WORKDIR/data
  cache = paths.data_cache_dir("", URL)
  assert not paths.is_remote(cache) and cache.endswith("bucket_x") and "gs:" not in cache
  assert paths.data_cache_dir("", str(tmp_path)) == str(tmp_path / "data")
  assert paths.data_cache_dir(str(tmp_path / "c"), URL) == str(tmp_path / "c")
  with pytest.raises(UserError, match=r"config.data.cache_dir='gs://bucket/c' must be a local directory"):
    paths.data_cache_dir("gs://bucket/c", URL)
  # the command line keeps the URL (the old code made it $PWD/gs:/bucket/x)
  from xlm_jax import cli
  seen = {}
  monkey_task = lambda config, workdir: seen.setdefault("workdir", workdir)
  import types
  config = types.SimpleNamespace(compilation_cache_dir="", host_malloc="system", task="pretrain",
                                 distributed=types.SimpleNamespace(coordinator="", num_processes=0, process_id=-1,
                                                                   timeout_s=5))
  import xlm_jax.train.pretrain as pretrain
  original = pretrain.run
  pretrain.run = monkey_task
  try:
    cli.run_task(config, URL)
  finally:
    pretrain.run = original
  assert seen["workdir"] == URL


def test_checkpoint_and_corpus_paths_on_gs(memory_gcs):
  from xlm_jax.data.sources import LocalFolder, make_corpus
  # a fake bundle layout: gs://bucket/x/checkpoints/7/{params,meta}
  for item in ("params", "meta"):
    paths.makedirs(f"{URL}/checkpoints/7/{item}")
  paths.write_text(f"{URL}/checkpoints/7/meta/metadata", json.dumps({"format": ckpt.BUNDLE_FORMAT, "task": "t"}))
  assert ckpt.checkpoint_root(URL) == f"{URL}/checkpoints"
  assert ckpt.all_steps(f"{URL}/checkpoints") == [7]
  assert ckpt.resolve(URL) == (f"{URL}/checkpoints", 7)
  assert ckpt.resolve(f"{URL}/checkpoints/7") == (f"{URL}/checkpoints", 7)
  meta = ckpt.read_meta(URL)
  assert meta["_root"] == f"{URL}/checkpoints" and meta["task"] == "t"
  with pytest.raises(UserError, match=r"no checkpoint at 'gs://bucket/missing'"):
    ckpt.resolve("gs://bucket/missing")
  # a corpus folder on gs:// (plain and gzip files), found and read through the same layer
  import gzip
  paths.write_text(f"{URL}/corpus/train.en", "hello\nworld\n")
  with paths.path(f"{URL}/corpus/train.fr.gz").open("wb") as f:
    f.write(gzip.compress("bonjour\nmonde\n".encode()))
  corpus = make_corpus(f"{URL}/corpus", workdir=URL, languages=["en", "fr"], seed=0)
  folder = corpus.sources[0] if hasattr(corpus, "sources") else None
  assert isinstance(folder, LocalFolder) and folder.folder == f"{URL}/corpus"
  assert folder.languages("train") == ["en", "fr"]
  assert list(corpus.mono("train", "fr")()) == ["bonjour", "monde"]
  assert len(corpus.mono_fingerprint("train", "en")) == 16


def test_writers_on_gs(memory_gcs):
  from xlm_jax.train.metrics import MetricsWriter
  from xlm_jax.train import pretrain
  writer = MetricsWriter(URL, total_steps=2, progress_bar=False, enabled=True)
  writer.write(1, {"loss": 2.0}, "train")
  writer.write(2, {"loss": 1.5}, "train")
  writer.close()
  lines = paths.read_text(f"{URL}/metrics.jsonl").splitlines()
  assert [json.loads(l)["loss"] for l in lines] == [2.0, 1.5]
  again = MetricsWriter(URL, total_steps=3, start_step=2, progress_bar=False, enabled=True)  # a resumed run appends
  again.write(3, {"loss": 1.0}, "train")
  again.close()
  assert len(paths.read_text(f"{URL}/metrics.jsonl").splitlines()) == 3
  events = [n for n in paths.listdir(f"{URL}/tensorboard") if n.startswith("events.out.tfevents")]
  assert events  # TensorBoard event files, written to the local cache and uploaded
  local = os.path.join(paths.data_cache_dir("", URL), "tensorboard", events[0])
  assert paths.path(f"{URL}/tensorboard/{events[0]}").stat().length == os.path.getsize(local) > 0
  assert not os.path.exists("gs:")  # nothing was written to a local folder named after the URL
  # tokenizer.json of a gs:// workdir (read back by config.data.tokenizer=gs://...)
  from xlm_jax.tokenizer import train_sentencepiece
  tok = train_sentencepiece({"en": lambda: iter(["a b c d e f g"] * 200)}, 20, n_sentences=200)
  paths.write_text(f"{URL}/tokenizer.json", json.dumps(tok.state()))
  assert pretrain.load_tokenizer(f"{URL}/tokenizer.json").fingerprint() == tok.fingerprint()
  assert pretrain.load_tokenizer(URL).fingerprint() == tok.fingerprint()
