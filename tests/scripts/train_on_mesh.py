"""Run a tiny pretraining on a given mesh and write per-step losses and parameter shardings as JSON.

Usage: XLA_FLAGS=--xla_force_host_platform_device_count=8 python train_on_mesh.py WORKDIR OUT.json DATA FSDP TENSOR
(used by tests/test_sharding.py, with PYTHONPATH=ROOT:ROOT/tests; fake CPU devices must be set before jax is imported).
"""
import json
import os
import sys


import jax  # noqa: E402

from conftest import tiny_config  # noqa: E402
from xlm_jax.train import pretrain  # noqa: E402


def main(workdir, out, data, fsdp, tensor):
  data, fsdp, tensor = int(data), int(fsdp), int(tensor)
  config = tiny_config(**{"mesh.data": data, "mesh.fsdp": fsdp, "mesh.tensor": tensor, "log.every": 1,
                          "train.steps": 20, "checkpoint.every": 1000, "model.dropout": 0.0,
                          "model.attention_dropout": 0.0})
  devices = jax.devices()[:data * fsdp * tensor]
  result = pretrain.run(config, workdir, devices)
  losses = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  losses = [r["loss"] for r in losses if r["kind"] == "train"]
  params = result.state.params
  emb = params["embeddings"]["embedding"]
  q = params["layers_0"]["attention"]["q_lin"]["kernel"]
  info = {
      "losses": losses,
      "n_devices": len(devices),
      "embedding_spec": [str(a) for a in emb.sharding.spec],
      "embedding_shard_shape": list(emb.addressable_shards[0].data.shape),
      "embedding_shape": list(emb.shape),
      "q_spec": [str(a) for a in q.sharding.spec],
      "q_shard_shape": list(q.addressable_shards[0].data.shape),
      "q_shape": list(q.shape),
      "adam_mu_spec": [str(a) for a in result.state.opt_state[1][0].mu["embeddings"]["embedding"].sharding.spec],
  }
  with open(out, "w") as f:
    json.dump(info, f)


if __name__ == "__main__":
  main(*sys.argv[1:])
