"""The training step's math on tiny models, in-process (no data pipeline): dropout independence in the
encoder-decoder, gradient accumulation, loss weights of 0, loss-weight schedules, the learning-rate schedule, the
non-finite guard. Each test names the defect it pins (issue #11)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from xlm_jax.model import EncoderDecoder, Transformer, TransformerConfig, init_encoder_decoder, init_params
from xlm_jax.train import nmt, pretrain
from xlm_jax.train.loop import make_train_step
from xlm_jax.train.optim import inverse_sqrt_schedule, make_optimizer, parse_lambda
from xlm_jax.train.state import TrainState

CFG = TransformerConfig(vocab_size=40, emb_dim=16, n_layers=1, n_heads=2, n_langs=2, max_positions=32)
B, L, P = 4, 8, 3


def mlm_batch(weights: np.ndarray, seed: int = 0) -> dict:
  """One MLM objective of B rows, L tokens, P prediction slots; `weights` [B, P] (rows may hold different numbers
  of slots)."""
  rng = np.random.default_rng(seed)
  return {"mlm": {"tokens": rng.integers(5, 40, (B, L)).astype(np.int32),
                  "positions": np.broadcast_to(np.arange(L, dtype=np.int32), (B, L)).copy(),
                  "langs": np.zeros((B, L), np.int32), "segment_ids": np.ones((B, L), np.int32),
                  "pred_index": np.tile(np.arange(P, dtype=np.int32), (B, 1)),
                  "pred_targets": rng.integers(5, 40, (B, P)).astype(np.int32),
                  "pred_weights": np.asarray(weights, np.float32)}}


def state_of(params, tx) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=jax.random.key_data(jax.random.key(0)))


@pytest.fixture(scope="module")
def params():
  return nn.unbox(init_params(CFG, jax.random.key(0)))


def test_accumulated_gradients_equal_the_full_batch_gradient(params):
  """Defect 3: micro-batches with different slot counts (rows 0, 2 hold 1 slot; rows 1, 3 hold 3). SGD with lr 1
  makes the parameter change the gradient itself."""
  loss = pretrain.make_loss(Transformer(CFG), {"mlm": parse_lambda("1")})
  batch = mlm_batch(np.array([[1, 0, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]]))
  tx = optax.sgd(1.0)
  results = {}
  for accumulate in (1, 2):
    step = jax.jit(make_train_step(loss, tx, lambda s: 1.0, accumulate))
    new, metrics = step(state_of(params, tx), batch)
    results[accumulate] = (new.params, metrics)
  for a, b in zip(jax.tree.leaves(results[1][0]), jax.tree.leaves(results[2][0])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)
  np.testing.assert_allclose(float(results[1][1]["loss"]), float(results[2][1]["loss"]), rtol=1e-6)
  assert float(results[2][1]["objectives"]["mlm"].weight) == 8.0  # summed over both micro-batches


def test_an_objective_weighing_zero_moves_nothing(params):
  """Defect 2: with AdamW + weight decay, a step whose only objective weighs 0 (the unsupervised-MT schedules reach
  0) must leave the parameters and the optimizer state unchanged; a step with weight 1 does move them."""
  cfg = type("T", (), dict(schedule="constant", lr=1e-2, warmup_steps=0, warmup_init_lr=0.0, steps=10,
                           clip_grad_norm=1.0, beta1=0.9, beta2=0.98, eps=1e-6, weight_decay=0.1))
  tx, schedule = make_optimizer(cfg)
  batch = mlm_batch(np.ones((B, P)))
  for weight, moves in (("0", False), ("1", True)):
    loss = pretrain.make_loss(Transformer(CFG), {"mlm": parse_lambda(weight)})
    new, metrics = jax.jit(make_train_step(loss, tx, schedule, 1))(state_of(params, tx), batch)
    changed = any(not np.array_equal(np.asarray(a), np.asarray(b))
                  for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(params)))
    assert changed == moves, weight
    assert float(metrics["skipped_zero_weight"]) == (0.0 if moves else 1.0)
    assert int(new.step) == 1  # the data and the dropout keys move on either way


def test_loss_weight_schedule_is_piecewise_linear_and_holds_its_last_value():
  lam = parse_lambda("0:1,10:0.5,20:0", "config.nmt.lambda_ae")
  values = [float(lam(s)) for s in (0, 5, 10, 15, 20, 100)]
  np.testing.assert_allclose(values, [1.0, 0.75, 0.5, 0.25, 0.0, 0.0], atol=1e-7)
  assert float(parse_lambda("0.3")(12345)) == pytest.approx(0.3)
  from xlm_jax.errors import UserError
  for bad in ("5:1,10:0", "0:1,0:2", "a", "0:1:2"):
    with pytest.raises(UserError, match="lambda_ae"):
      parse_lambda(bad, "config.nmt.lambda_ae")


def test_learning_rate_schedule_is_the_reference_formula():
  """XLM's AdamInverseSqrtWithWarmup (shared/reference/xlm-reference.md): linear warm-up from warmup_init_lr to lr
  over `warmup` updates, then lr * sqrt(warmup / step)."""
  lr, warmup, init = 1e-4, 4000, 1e-7
  schedule = inverse_sqrt_schedule(lr, warmup, init)
  for step in (0, 1, 100, 3999, 4000, 4001, 10_000, 160_000):
    if step < warmup:
      expected = init + step * (lr - init) / warmup
    else:
      expected = lr * np.sqrt(warmup) * step ** -0.5
    assert float(schedule(step)) == pytest.approx(expected, rel=1e-5), step


def nmt_batch(seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  tok = lambda: rng.integers(5, 40, (B, L)).astype(np.int32)
  ar = np.broadcast_to(np.arange(L, dtype=np.int32), (B, L)).copy()
  return {"mt": {"src_tokens": tok(), "src_positions": ar, "src_langs": np.zeros((B, L), np.int32),
                 "src_segments": np.ones((B, L), np.int32), "tgt_tokens": tok(), "tgt_positions": ar,
                 "tgt_langs": np.ones((B, L), np.int32), "tgt_segments": np.ones((B, L), np.int32),
                 "pred_index": np.tile(np.arange(L - 1, dtype=np.int32), (B, 1)), "pred_targets": tok()[:, 1:],
                 "pred_weights": np.ones((B, L - 1), np.float32)}}


def test_encoder_and_decoder_draw_independent_dropout_masks():
  """Defect 1: source and target of the same shape; the embedding-dropout masks of the encoder and of the decoder
  in one training forward must differ (they were identical: one key, two applies of same-named modules)."""
  enc = CFG.replace(dropout=0.5)
  dec = enc.replace(is_decoder=True, causal=True)
  params = nn.unbox(init_encoder_decoder(enc, dec, jax.random.key(0)))
  loss = nmt.make_loss(EncoderDecoder(enc, dec), {"mt": parse_lambda("1")}, None, pad_id=2)
  masks = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    # the embedding dropout (xlm_jax.model.layers.Dropout, or Linen's)
    if type(context.module).__name__ == "Dropout" and context.module.name == "dropout" and \
        context.method_name == "__call__":
      masks.append(np.asarray((out == 0) & (args[0] != 0)))
    return out

  with nn.intercept_methods(record):
    loss.sums(params, jax.tree.map(jnp.asarray, nmt_batch()), jax.random.key(3), False)
  assert len(masks) == 2  # encoder, then decoder
  assert masks[0].shape == masks[1].shape and 0.3 < masks[0].mean() < 0.7
  assert not np.array_equal(masks[0], masks[1])


def test_non_finite_loss_drops_the_update(params):
  """The non-finite guard inside the step: a NaN in the batch's weights makes the loss NaN; the parameters and the
  optimizer state stay as they were and the metrics say so (and keep the NaN)."""
  tx = optax.adam(1e-2)
  loss = pretrain.make_loss(Transformer(CFG), {"mlm": parse_lambda("1")})
  weights = np.ones((B, P))
  weights[1, 2] = np.nan
  state = state_of(params, tx)
  new, metrics = jax.jit(make_train_step(loss, tx, lambda s: 1.0, 1))(state, mlm_batch(weights))
  assert float(metrics["skipped_nonfinite"]) == 1.0 and np.isnan(float(metrics["loss"]))
  for a, b in zip(jax.tree.leaves((new.params, new.opt_state)), jax.tree.leaves((state.params, state.opt_state))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_back_translation_step_trains_through_its_deterministic_generated_source():
  """On-the-fly back-translation: the l1 sentences are translated greedily (no dropout, no gradient) and the model
  trains on (generated l2 -> original l1). The generation is deterministic; the loss reaches the encoder, which
  only sees the generated source; the slot weights are the original sentence's tokens after `</s>`."""
  from xlm_jax import decode as decode_lib
  enc = CFG.replace(dropout=0.1)
  dec = enc.replace(is_decoder=True, causal=True)
  params = nn.unbox(init_encoder_decoder(enc, dec, jax.random.key(1)))
  options = decode_lib.DecodeOptions(eos_id=1, pad_id=2, beam_size=1, max_len_a=1.0, max_len_b=3, max_len=L)
  bt_decode = decode_lib.make_decoder(enc.replace(dropout=0.0), dec.replace(dropout=0.0), options)
  loss = nmt.make_loss(EncoderDecoder(enc, dec), {"bt": parse_lambda("1")}, bt_decode, pad_id=2)
  tokens = np.full((B, L), 2, np.int32)
  for r, n in enumerate((5, 8, 3, 6)):
    tokens[r, :n] = [1, *np.random.default_rng(r).integers(5, 40, n - 2), 1]
  batch = {"bt": {"tokens": tokens, "langs1": np.zeros(B, np.int32), "langs2": np.ones(B, np.int32)}}
  first = bt_decode(params, tokens, np.zeros(B, np.int32), np.ones(B, np.int32)).tokens
  again = bt_decode(params, tokens, np.zeros(B, np.int32), np.ones(B, np.int32)).tokens
  np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
  assert float(loss.weights(batch)["bt"]) == (5 + 8 + 3 + 6) - B
  grads = jax.grad(lambda p: loss.sums(p, batch, jax.random.key(0), False)["bt"].loss)(params)
  encoder_norm = optax.global_norm(grads["encoder"])
  assert np.isfinite(float(encoder_norm)) and float(encoder_norm) > 0
  sums = [loss.sums(params, batch, None, True)["bt"] for _ in range(2)]
  assert float(sums[0].loss) == float(sums[1].loss) and float(sums[0].weight) == (5 + 8 + 3 + 6) - B


def test_clm_trains_through_the_loop(tmp_path):
  """CLM steps (causal attention, next-token targets) through the whole loop: the metrics name the objective and the
  loss goes down over 6 steps (from about ln(vocab) at initialisation)."""
  import json
  from conftest import tiny_config
  from xlm_jax.train import pretrain
  config = tiny_config(**{"data.mlm_steps": "", "data.clm_steps": "xa,xb", "train.steps": 6, "log.every": 1,
                          "train.lr": 1e-2, "train.warmup_steps": 0, "train.schedule": "constant",
                          "model.dropout": 0.0, "model.attention_dropout": 0.0})
  result = pretrain.run(config, str(tmp_path))
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in records if r["kind"] == "train"]
  assert len(train) == 6 and all("clm_loss" in r and "mlm_loss" not in r for r in train)
  assert train[-1]["clm_loss"] < train[0]["clm_loss"]
  assert any(k.endswith("clm_loss") for k in result.metrics)


def test_prediction_sums_match_optax_cross_entropy_argmax_accuracy_and_their_gradient():
  """The fused cross-entropy (one max for the log-sum-exp and the accuracy) equals optax's loss and gradient and
  `argmax == target` accuracy, on logits large enough to overflow a naive exp."""
  from xlm_jax.train.loop import prediction_sums
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(3, 5, 97)).astype(np.float32) * 30.0)
  targets = jnp.asarray(rng.integers(0, 97, (3, 5)).astype(np.int32))
  targets = targets.at[0, :3].set(jnp.argmax(logits[0, :3], -1))  # some slots predicted right
  weights = jnp.asarray((rng.random((3, 5)) < 0.8).astype(np.float32))
  sums = prediction_sums(logits, targets, weights)
  reference = lambda l: jnp.sum(optax.softmax_cross_entropy_with_integer_labels(l, targets) * weights)
  np.testing.assert_allclose(float(sums.loss), float(reference(logits)), rtol=1e-6)
  assert float(sums.correct) == float(jnp.sum((jnp.argmax(logits, -1) == targets) * weights))
  assert float(sums.correct) >= 1.0
  grad = jax.grad(lambda l: prediction_sums(l, targets, weights).loss)(logits)
  np.testing.assert_allclose(np.asarray(grad), np.asarray(jax.grad(reference)(logits)), atol=1e-6)
