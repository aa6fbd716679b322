"""The ahead-of-time planner: the demo model compiled for a small TPU topology (when libtpu is installed), the GPU
estimate, and its one-sentence answers (unknown topology, does not fit)."""
import importlib.util

import pytest

from conftest import tiny_config
from xlm_jax import plan
from xlm_jax.errors import UserError

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None


def test_topology_names():
  t = plan.parse_target("v4-32")
  assert (t.platform, t.devices, t.topology, t.chip_config, t.hbm_gib) == ("tpu", 16, "v4:2x2x4", "megacore", 32)
  t = plan.parse_target("v5e-256")
  assert (t.devices, t.topology, t.hbm_gib) == (256, "v5e:16x16", 16)
  assert plan.parse_target("v5p-128").topology == "v5:4x4x4"
  assert plan.parse_target("8xH100").devices == 8
  for bad in ("v4-31", "v9-8", "tpu", "8xK80"):
    with pytest.raises(UserError, match=rf"^unknown topology '{bad}': use TPU slices"):
      plan.parse_target(bad)


def test_compiler_refusal_is_a_verdict():
  message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries (34.43G) "
             "exceeds available HBM (30.75G).")
  assert plan.oom_temporaries(message) == int(34.43 * 1024 ** 3)
  assert plan.oom_temporaries("INVALID_ARGUMENT: something else") is None


def test_gpu_estimate_and_verdicts():
  config = tiny_config(**{"data.batch_size": 8})
  row = plan.plan(config, plan.parse_target("4xH100"), "fsdp")
  assert row["estimate"] and row["verdict"] == "fits" and row["per_device_batch"] == 2
  n = row["parameters"]
  assert row["params_bytes"] == pytest.approx(4 * n / 4, rel=0.05)  # float32, sharded over 4 devices (rounded up)
  assert row["opt_state_bytes"] >= 2 * row["params_bytes"]          # Adam's two moments
  # a slice far too small: the sentence names the sizes and what would fit
  small = dict(row, total_bytes=row["hbm_bytes"] * 2, verdict="short by 80.0 GiB", config="tiny")
  sentence = plan.verdict_sentence(small, "config.mesh.preset=fsdp with config.model.remat=full")
  assert sentence.startswith("tiny on 4xH100 with preset fsdp and remat none does not fit: 160.0 GiB per device")
  assert sentence.endswith("config.mesh.preset=fsdp with config.model.remat=full would fit.")
  with pytest.raises(UserError, match=r"is not divisible by 8"):
    bad = plan.plan(tiny_config(**{"data.batch_size": 12}), plan.parse_target("8xH100"), "dp")
    raise UserError(bad["error"])


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed: the TPU compile needs requirements-tpu.txt "
                    "(install it in a separate venv, see README 'Will it fit?')")
def test_demo_model_compiles_for_a_small_tpu_topology():
  config = tiny_config(**{"data.batch_size": 8})
  row = plan.plan(config, plan.parse_target("v4-8"), "fsdp")
  assert not row["estimate"] and row["devices"] == 4 and row["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  assert row["verdict"] == "fits"
  assert row["argument_bytes"] >= row["params_bytes"] + row["opt_state_bytes"]
  assert row["alias_bytes"] > 0  # the donated state is updated in place
  assert row["code_bytes"] > 0 and row["total_bytes"] < row["hbm_bytes"]
