"""One process of a multi-process pretraining run on 127.0.0.1 (used by tests/test_multihost.py).

Usage: python multihost_pretrain.py PROCESS_ID NUM_PROCESSES PORT DEVICES_PER_PROCESS WORKDIR OUT.json
With NUM_PROCESSES=1 it runs the same training in one process, for comparison.
"""
import json
import os
import sys

process_id, num_processes, port, local_devices, workdir, out = sys.argv[1:7]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local_devices}"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

if int(num_processes) > 1:
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=int(num_processes),
                             process_id=int(process_id), initialization_timeout=120)

from conftest import tiny_config  # noqa: E402
from xlm_jax.train import pretrain  # noqa: E402

config = tiny_config(**{"log.every": 1, "train.steps": 6, "checkpoint.every": 3, "data.batch_size": 16,
                        "data.mlm_steps": "xa,xb,xa-xb", "model.dropout": 0.0, "model.attention_dropout": 0.0,
                        "log.batch_checksums": True})
result = pretrain.run(config, workdir)
if jax.process_index() == 0:
  losses = [json.loads(l)["loss"] for l in open(os.path.join(workdir, "metrics.jsonl")) if '"train"' in l]
  with open(out, "w") as f:
    json.dump({"losses": losses, "processes": jax.process_count(), "devices": jax.device_count(),
               "eval": result.metrics}, f)
