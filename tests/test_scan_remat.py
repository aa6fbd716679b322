"""Scan over layers and rematerialisation are memory switches, not new functions.

- the scanned stack (parameters stacked on a `layers` axis) gives the unrolled stack's losses over 5 Adam steps
  (<= 1e-5; dropout off, since the two layouts draw per-layer dropout keys differently);
- remat `full` and `dots_saveable` give the same gradients as no remat, unrolled and scanned;
- a checkpoint written in one layout restores in the other (parameters and Adam moments), and bundles load unrolled.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from xlm_jax import checkpoint as ckpt
from xlm_jax import parallel
from xlm_jax.model import Transformer, TransformerConfig, init_params
from xlm_jax.model.layout import is_stacked, to_layout
from xlm_jax.train.state import sharded_state_layout, strip_boxes

CFG = TransformerConfig(vocab_size=64, emb_dim=32, n_layers=3, n_heads=4, n_langs=2, pad_id=2)


def batch():
  rng = np.random.default_rng(0)
  tokens = rng.integers(5, 64, size=(4, 12)).astype(np.int32)
  tokens[1, 9:] = 2  # some padding
  return jnp.asarray(tokens), jnp.asarray(rng.integers(0, 2, size=(4, 12)).astype(np.int32))


def loss_fn(cfg):
  model = Transformer(cfg)

  def loss(params, tokens, langs, key=None):
    rngs = {} if key is None else {"dropout": key}
    logits = model.apply({"params": params}, tokens, langs=langs, deterministic=key is None, rngs=rngs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens).mean()

  return loss


@pytest.fixture(scope="module")
def unrolled():
  return strip_boxes(init_params(CFG, jax.random.key(0)))


def test_layouts_convert_both_ways(unrolled):
  stacked = to_layout(unrolled, True)
  assert is_stacked(unrolled) is False and is_stacked(stacked) is True
  assert stacked["layers"]["attention"]["q_lin"]["kernel"].shape[0] == 3
  # the converted tree is exactly what the scanned model's init creates (names and shapes)
  scan_shapes = jax.tree.map(lambda x: x.shape, strip_boxes(jax.eval_shape(
      lambda: init_params(CFG.replace(scan_layers=True), jax.random.key(0)))))
  assert jax.tree.map(lambda x: x.shape, stacked) == scan_shapes
  back = to_layout(stacked, False)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), back, unrolled))


def test_scan_gives_the_unrolled_losses(unrolled):
  tokens, langs = batch()
  tx = optax.adam(1e-2)
  curves = {}
  for scan in (False, True):
    params = to_layout(unrolled, scan)
    loss = jax.jit(loss_fn(CFG.replace(scan_layers=scan)))
    grad = jax.jit(jax.value_and_grad(loss_fn(CFG.replace(scan_layers=scan))))
    opt_state, values = tx.init(params), []
    for _ in range(5):
      value, g = grad(params, tokens, langs)
      updates, opt_state = tx.update(g, opt_state, params)
      params = optax.apply_updates(params, updates)
      values.append(float(value))
    values.append(float(loss(params, tokens, langs)))
    curves[scan] = np.array(values)
  rel = np.abs(curves[True] - curves[False]) / np.abs(curves[False])
  print("scan vs unrolled, max relative loss difference over 5 Adam steps:", rel.max())
  assert rel.max() <= 1e-5
  assert curves[False][-1] < curves[False][0]


@pytest.mark.parametrize("scan", [False, True])
def test_remat_gives_the_same_gradients(unrolled, scan):
  tokens, langs = batch()
  params = to_layout(unrolled, scan)
  key = jax.random.key(1)  # dropout on: remat must replay the same masks
  grads = {}
  for policy in ("none", "full", "dots_saveable"):
    cfg = CFG.replace(scan_layers=scan, remat=policy, dropout=0.1, attention_dropout=0.1)
    grads[policy] = jax.jit(jax.grad(loss_fn(cfg)))(params, tokens, langs, key)
  for policy in ("full", "dots_saveable"):
    diff = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), grads[policy], grads["none"])))
    print(f"scan={scan} remat={policy}: max |gradient difference| {diff:.2e}")
    assert diff <= 1e-6


def test_checkpoint_restores_across_layouts(unrolled, tmp_path):
  mesh = parallel.make_mesh({"preset": "fsdp"}, jax.devices()[:1])
  rules = parallel.DEFAULT_RULES
  tx = optax.adam(1e-3)
  layouts = {scan: sharded_state_layout(lambda r, s=scan: init_params(CFG.replace(scan_layers=s), r), tx, 0, mesh,
                                        rules) for scan in (False, True)}
  create, _, _ = layouts[False]
  state = create()
  state = state.replace(opt_state=jax.tree.map(lambda x: x + 0.5 if x.dtype == jnp.float32 else x, state.opt_state))
  saver = ckpt.Checkpointer(str(tmp_path / "ckpt"), async_save=False)
  saver.save(1, state.params, {"format": ckpt.BUNDLE_FORMAT, "model": CFG.to_dict()},
             train={"step": state.step, "opt_state": state.opt_state, "rng": state.rng}, data={"next_step": 1})
  _, target, _ = layouts[True]
  restored = saver.restore(1, target.params, {"step": target.step, "opt_state": target.opt_state, "rng": target.rng})
  saver.close()
  same = lambda a, b: jax.tree.all(jax.tree.map(lambda x, y: bool(np.array_equal(np.asarray(x), np.asarray(y))), a, b))
  assert is_stacked(restored["params"]) is True
  assert same(restored["params"], to_layout(state.params, True))
  assert same(restored["train"]["opt_state"], to_layout(state.opt_state, True))
  # restored arrays carry the target's shardings
  leaf = restored["params"]["layers"]["ffn"]["lin1"]["kernel"]
  assert leaf.sharding == target.params["layers"]["ffn"]["lin1"]["kernel"].sharding
  # and a stacked checkpoint comes back unrolled as a bundle (host arrays)
  saver = ckpt.Checkpointer(str(tmp_path / "stacked"), async_save=False)
  saver.save(1, restored["params"], {"format": ckpt.BUNDLE_FORMAT, "model": CFG.to_dict()})
  saver.close()
  params, _ = ckpt.restore_params(str(tmp_path / "stacked"))
  assert is_stacked(params) is False and same(params, state.params)


def test_decoding_a_scanned_model_says_what_to_do():
  model = Transformer(CFG.replace(scan_layers=True))
  params = strip_boxes(jax.eval_shape(lambda: init_params(CFG.replace(scan_layers=True), jax.random.key(0))))
  with pytest.raises(ValueError, match="scan_layers=False"):
    jax.eval_shape(lambda p: model.apply({"params": p}, 1, batch=2, method=Transformer.init_cache), params)
