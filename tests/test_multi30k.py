"""The real corpus: Multi30k (en, fr, de) prepared and pretrained with MLM + TLM on CPU, packed at one shape."""
import os

import numpy as np
import pytest

from conftest import FULL
from configs.multi30k import DATA, get_config

pytestmark = pytest.mark.skipif(not os.path.isdir(DATA), reason=f"Multi30k not found at {DATA}")


@pytest.mark.slow
def test_prepare_pack_and_pretrain_on_multi30k(tmp_path):
  from xlm_jax import parallel
  from xlm_jax.train import loop, pretrain
  config = get_config("tiny")
  config.train.steps = 300 if FULL else 8
  config.log.progress_bar = False
  config.log.every = 4
  config.data.eval_rows = 16 if not FULL else 128
  config.compilation_cache_dir = ""
  mesh = parallel.make_mesh(config.mesh.to_dict())
  task, context = pretrain.build_task(config, str(tmp_path), mesh)
  m = loop.train(task, config, str(tmp_path), mesh).metrics
  assert {"mlm_en/mlm_ppl", "mlm_fr/mlm_ppl", "mlm_de/mlm_ppl", "tlm_en-fr/tlm_acc", "tlm_de-en/tlm_acc"} <= set(m)
  assert all(np.isfinite(v) for v in m.values())

  manifest = context["para"][("en", "fr")].manifest["splits"]["train"]
  assert manifest["lines"] == 29000 and manifest["sentences"] + sum(manifest["dropped"].values()) == 29000
  # packed TLM rows at the config's one shape (16 x 128): at least 95% real tokens
  tlm = np.concatenate([task.batches.batch(s)["tlm"]["segment_ids"] for s in range(20)])
  assert tlm.shape[1] == 128
  share = float(np.mean(tlm > 0))
  print("non-pad share of packed Multi30k TLM rows:", share)
  assert share >= 0.95
