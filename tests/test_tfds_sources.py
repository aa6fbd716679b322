"""TFDS registered datasets as sources, with `tfds.testing.mock_data` (no download, no prepared data needed)."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import tiny_config
from xlm_jax.data.sources import TfdsSource
from xlm_jax.errors import UserError

PAIRS = ["wmt14_translate/fr-en", "wmt16_translate/de-en", "wmt16_translate/ro-en"]


@pytest.fixture
def mock_tfds():
  with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
    yield


@pytest.mark.parametrize("name", PAIRS)
def test_translation_datasets_give_pairs_and_monolingual_sides(mock_tfds, name):
  l1, l2 = name.split("/")[1].split("-")
  source = TfdsSource(name)
  assert source.has_para("train", l1, l2) and source.has_mono("valid", l2)
  pairs = list(source.para("train", l1, l2)())
  assert len(pairs) == 40 and all(isinstance(a, str) and isinstance(b, str) for a, b in pairs)
  reversed_pairs = list(source.para("train", l2, l1)())
  assert reversed_pairs[0] == pairs[0][::-1]
  assert list(source.mono("train", l1)())[0] == pairs[0][0].strip()


def test_wikipedia_gives_monolingual_lines(mock_tfds):
  source = TfdsSource("wikipedia/20230601.fr")
  assert source.has_mono("train", "fr") and not source.has_mono("train", "en")
  lines = list(source.mono("train", "fr")())
  assert lines and all(line == line.strip() and line for line in lines)


def test_unprepared_dataset_is_a_clear_error_and_never_downloads(tmp_path):
  source = TfdsSource("wmt14_translate/fr-en", data_dir=str(tmp_path))
  with pytest.raises(UserError, match="not prepared"):
    source.para("train", "fr", "en")
  assert not any(tmp_path.rglob("*.tgz"))


def test_pretraining_runs_on_tfds_sources(tmp_path):
  """TFDS mocking patches every DatasetBuilder, our own prepared-data builder included, so the registered
  datasets are opened under the mock and the preparation and training run after it."""
  from xlm_jax.train import pretrain
  config = tiny_config(**{"data.corpus": "tfds:wmt14_translate/fr-en,tfds:wikipedia/20230601.fr",
                          "data.languages": "en,fr", "data.mlm_steps": "en,fr,en-fr,fr-en", "data.vocab_size": 120,
                          "train.steps": 3, "data.eval_rows": 4, "data.batch_size": 8})
  with tfds.testing.mock_data(num_examples=60, policy=tfds.testing.MockPolicy.USE_CODE):
    corpus = pretrain.make_corpus(config, str(tmp_path), ["en", "fr"])
    for split in ("train", "valid"):
      corpus.mono(split, "en"), corpus.mono(split, "fr"), corpus.para(split, "en", "fr")
  assert [type(s).__name__ for s in corpus.sources] == ["TfdsSource", "TfdsSource"]
  result = pretrain.run(config, str(tmp_path), corpus=corpus)
  assert np.isfinite(result.metrics["tlm_en-fr/tlm_loss"]) and np.isfinite(result.metrics["mlm_fr/mlm_loss"])
