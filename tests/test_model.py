"""The XLM Transformer: published parameter counts, masking semantics, causal mode, bf16 path, traps."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import xlm_paper
from xlm_jax.model import Transformer, TransformerConfig, count_parameters, forward_flops_per_token, init_params, train_flops
from xlm_jax.model.layers import sinusoidal_table
from xlm_jax.train.pretrain import model_config

SMALL = TransformerConfig(vocab_size=50, emb_dim=32, n_layers=2, n_heads=4, n_langs=3, dropout=0.0,
                          attention_dropout=0.0)


def n_params(cfg):
  abstract = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(abstract)))


@pytest.mark.parametrize("variant, expected", [("xlm_mlm_tlm_xnli15_1024", 249_071_384),
                                               ("xlm_mlm_100_1280", 571_696_960)])
def test_paper_configs_match_published_parameter_counts(variant, expected):
  config = xlm_paper.get_config(variant)
  from xlm_jax.config_base import parse_list
  cfg = model_config(config, config.data.vocab_size, len(parse_list(config.data.languages)), 2)
  assert n_params(cfg) == expected
  assert count_parameters(cfg) == expected


def test_paper_enfr_shape():
  config = xlm_paper.get_config("xlm_mlm_enfr_1024")
  cfg = model_config(config, config.data.vocab_size, 2, 2)
  assert (cfg.n_layers, cfg.emb_dim, cfg.n_heads, cfg.ffn_dim, cfg.has_lang_emb) == (6, 1024, 8, 4096, True)
  assert n_params(cfg) == count_parameters(cfg)


def test_parameters_carry_logical_axis_names():
  boxed = jax.eval_shape(lambda: init_params(SMALL, jax.random.key(0)))
  specs = nn.get_partition_spec(boxed)
  assert tuple(specs["embeddings"]["embedding"]) == ("vocab", "embed")
  assert tuple(specs["layers_0"]["attention"]["q_lin"]["kernel"]) == ("embed", "heads", "kv")
  assert tuple(specs["layers_1"]["ffn"]["lin2"]["kernel"]) == ("mlp", "embed")
  assert tuple(specs["pred_bias"]) == ("vocab",)
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert all(isinstance(x, nn.Partitioned) for x in leaves)


@pytest.fixture(scope="module")
def params():
  p = nn.unbox(init_params(SMALL, jax.random.key(1)))
  # perturb biases and LayerNorms so that masking mistakes cannot hide behind zeros and ones
  leaves, tree = jax.tree.flatten(p)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  return jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def test_pad_row_of_fresh_embedding_is_zero():
  p = nn.unbox(init_params(SMALL, jax.random.key(0)))
  assert np.all(np.asarray(p["embeddings"]["embedding"][SMALL.pad_id]) == 0)
  assert np.std(np.asarray(p["embeddings"]["embedding"][3:])) == pytest.approx(SMALL.emb_dim ** -0.5, rel=0.1)


def test_packed_row_equals_separate_rows(params):
  """Two examples packed in one row (segment ids, positions restarting) give the states of separate rows."""
  model = Transformer(SMALL)
  a, b = [1, 7, 8, 9, 1], [1, 11, 12, 1]
  packed = jnp.array([a + b + [2, 2]])
  segments = jnp.array([[1] * 5 + [2] * 4 + [0, 0]])
  positions = jnp.array([list(range(5)) + list(range(4)) + [0, 0]])
  langs = jnp.array([[0] * 5 + [2] * 4 + [0, 0]])
  h = model.apply({"params": params}, packed, positions, langs, segments, method="encode")
  ha = model.apply({"params": params}, jnp.array([a]), None, jnp.array([[0] * 5]), method="encode")
  hb = model.apply({"params": params}, jnp.array([b]), None, jnp.array([[2] * 4]), method="encode")
  np.testing.assert_allclose(h[0, :5], ha[0], atol=1e-5)
  np.testing.assert_allclose(h[0, 5:9], hb[0], atol=1e-5)
  assert np.all(np.asarray(h[0, 9:]) == 0)


def test_right_padding_does_not_change_real_positions(params):
  model = Transformer(SMALL)
  x = jnp.array([[1, 5, 6, 7, 1]])
  padded = jnp.array([[1, 5, 6, 7, 1, 2, 2, 2]])
  h1 = model.apply({"params": params}, x, method="encode")
  h2 = model.apply({"params": params}, padded, method="encode")
  np.testing.assert_allclose(h1[0], h2[0, :5], atol=1e-5)


def test_causal_mode_ignores_the_future(params):
  model = Transformer(SMALL)
  x1 = jnp.array([[1, 5, 6, 7, 8, 1]])
  x2 = jnp.array([[1, 5, 6, 9, 9, 9]])
  h1 = model.apply({"params": params}, x1, causal=True, method="encode")
  h2 = model.apply({"params": params}, x2, causal=True, method="encode")
  np.testing.assert_allclose(h1[0, :3], h2[0, :3], atol=1e-6)
  hn1 = model.apply({"params": params}, x1, method="encode")
  hn2 = model.apply({"params": params}, x2, method="encode")
  assert np.abs(np.asarray(hn1[0, :3] - hn2[0, :3])).max() > 1e-3


def test_language_embeddings_used_only_when_given(params):
  model = Transformer(SMALL)
  x = jnp.array([[1, 5, 6, 1]])
  base = model.apply({"params": params}, x, method="encode")
  with_l0 = model.apply({"params": params}, x, None, jnp.zeros_like(x), method="encode")
  with_l1 = model.apply({"params": params}, x, None, jnp.ones_like(x), method="encode")
  per_row = model.apply({"params": params}, x, None, jnp.array([1]), method="encode")
  assert np.abs(np.asarray(with_l0 - with_l1)).max() > 1e-3
  assert np.abs(np.asarray(base - with_l0)).max() > 1e-3
  np.testing.assert_allclose(per_row, with_l1, atol=1e-6)


def test_prediction_at_slots_equals_full_logits(params):
  model = Transformer(SMALL)
  x = jnp.array([[1, 5, 6, 7, 8, 1], [1, 9, 10, 1, 2, 2]])
  index = jnp.array([[1, 3], [2, 0]])
  full = model.apply({"params": params}, x)
  at = model.apply({"params": params}, model.apply({"params": params}, x, method="encode"), index, method="predict_at")
  np.testing.assert_allclose(at[0, 0], full[0, 1], atol=1e-5)
  np.testing.assert_allclose(at[1, 0], full[1, 2], atol=1e-5)


@pytest.mark.parametrize("causal,scan", [(False, False), (True, False), (False, True)])
def test_encode_at_rows_equals_full_encode_picked_values_and_gradients(params, causal, scan):
  """`encode(rows=)` runs the last layer only at `rows`; hidden states and parameter gradients equal the full pass
  picked there (packed segments, padding, a TLM-style restart of positions, rows in any order, a repeated row)."""
  cfg = SMALL.replace(scan_layers=scan)
  p = params
  if scan:
    from xlm_jax.model.layout import to_layout
    p = to_layout(params, scan_layers=True)
  model = Transformer(cfg)
  x = jnp.array([[1, 5, 6, 7, 1, 8, 9, 1], [1, 9, 10, 11, 12, 1, 2, 2]])
  positions = jnp.array([[0, 1, 2, 3, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6, 7]])
  langs = jnp.array([[0, 0, 0, 0, 1, 1, 1, 1], [2, 2, 2, 2, 2, 2, 2, 2]])
  segments = jnp.array([[1, 1, 1, 1, 2, 2, 2, 2], [1, 1, 1, 1, 1, 1, 0, 0]])
  rows = jnp.array([[6, 1, 3], [2, 2, 0]])

  def full(q):
    h = model.apply({"params": q}, x, positions, langs, segments, causal=causal, method="encode")
    return jnp.take_along_axis(h, rows[..., None], axis=1)

  def at(q):
    return model.apply({"params": q}, x, positions, langs, segments, causal=causal, rows=rows, method="encode")

  np.testing.assert_allclose(at(p), full(p), atol=1e-5)
  g_full = jax.grad(lambda q: jnp.sum(jnp.sin(full(q))))(p)
  g_at = jax.grad(lambda q: jnp.sum(jnp.sin(at(q))))(p)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_at), jax.tree.leaves(g_full)):
    np.testing.assert_allclose(a, b, atol=1e-5, err_msg=jax.tree_util.keystr(path))
  assert np.abs(np.asarray(jax.tree.leaves(g_at)[0])).max() > 0


def test_train_flops_count_the_last_layer_only_at_predicted_rows():
  """With every position predicted the count is the full pass; with 15% predicted the unrolled model saves the
  last layer's work except keys and values (by hand: d=32, 2 layers, ffn 128, L=8), and scanned layers do not."""
  cfg = SMALL
  d, ffn, length, tokens = cfg.emb_dim, cfg.ffn_dim, 8, 16
  projection = lambda n: n * 2 * d * cfg.vocab_size
  full = 3 * (tokens * forward_flops_per_token(cfg, length) + projection(tokens))
  assert train_flops(cfg, tokens, length, tokens) == pytest.approx(full)
  per_layer = 2 * 4 * d * d + 2 * 2 * d * ffn + 4 * length * d
  by_hand = 3 * (tokens * per_layer + tokens * 2 * 2 * d * d + 3 * (per_layer - 2 * 2 * d * d) + projection(3))
  assert train_flops(cfg, tokens, length, 3) == pytest.approx(by_hand)
  assert train_flops(cfg.replace(scan_layers=True), tokens, length, 3) == pytest.approx(
      3 * (tokens * 2 * per_layer + projection(3)))


def test_bfloat16_compute_stays_close_to_float32(params):
  x = jnp.array([[1, 5, 6, 7, 8, 1]])
  f32 = Transformer(SMALL).apply({"params": params}, x)
  bf16 = Transformer(SMALL.replace(dtype="bfloat16")).apply({"params": params}, x)
  assert bf16.dtype == jnp.float32
  assert np.abs(np.asarray(f32 - bf16)).max() < 0.1
  assert np.abs(np.asarray(f32 - bf16)).max() > 0  # it really computed in bf16


def test_bfloat16_gradients_are_float32_and_close_to_float32_gradients(params):
  """mixed_einsum's custom VJP: gradients come back float32 (never rounded to bf16) and near the f32 ones; and the
  backward dots really take bf16 operands (the cotangent is cast), which is what makes them fast on CPU."""
  x = jnp.array([[1, 5, 6, 7, 8, 1], [1, 9, 10, 11, 1, 2]])

  def loss(p, dtype):
    logits = Transformer(SMALL.replace(dtype=dtype)).apply({"params": p}, x, langs=jnp.zeros_like(x))
    return jnp.mean(jax.nn.log_softmax(logits)[..., 7])

  g32 = jax.grad(loss)(params, "float32")
  g16 = jax.grad(loss)(params, "bfloat16")
  floor = 1e-3 * max(float(np.abs(np.asarray(a)).max()) for a in jax.tree.leaves(g32))
  for a, b in zip(jax.tree.leaves(g32), jax.tree.leaves(g16)):
    assert b.dtype == jnp.float32
    assert float(np.abs(np.asarray(a - b)).max()) <= 0.05 * float(np.abs(np.asarray(a)).max()) + floor
  hlo = jax.jit(jax.grad(loss), static_argnums=1).lower(params, "bfloat16").as_text()
  dots = [line for line in hlo.splitlines() if "dot_general" in line and "tensor<" in line]
  upcast = [d for d in dots if "xf32>" in d.split("->")[0]]
  assert dots and not upcast, upcast[:2]  # plain autodiff would run the backward dots on float32 operands


def test_attention_backward_runs_every_dot_on_bf16_operands_after_compilation():
  """The key and value gradients contract the middle axis of both operands ('nqk,nqd->nkd'); XLA:CPU compiles such
  a bf16 batched dot as a float32 one (operands upcast). `_grad_einsum` runs it on a materialised transpose
  (`swap_minor_axes`) instead: same gradients, and no dot of the compiled backward takes float32 operands."""
  import re
  from xlm_jax.model import layers

  x = jax.random.normal(jax.random.key(1), (1, 32, 32))
  seg = jnp.ones((1, 32), jnp.int32)
  mask = layers.attention_mask(seg, seg, False)
  attention = layers.MultiHeadAttention(2, jnp.bfloat16, 0.0, dim=32)
  p = attention.init({"params": jax.random.key(0)}, x, x, mask)
  grad = lambda: jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.sin(attention.apply(p, x, x, mask))), (0, 1)))

  def float32_dots(compiled_text: str) -> list[str]:
    computations = re.split(r"\n(?=%\S+ \()", compiled_text)
    return [c.split("\n", 1)[0] for c in computations if " dot(" in c and "f32[" in c.split("\n", 1)[0].split("->")[0]]

  new = grad()
  assert not float32_dots(new.lower(p, x).compile().as_text())
  new_grads = new(p, x)
  plain = layers._grad_einsum
  try:
    layers._grad_einsum = layers._einsum_f32  # the products as written: XLA upcasts them (the check can fail)
    old = grad()
    assert float32_dots(old.lower(p, x).compile().as_text())
    for a, b in zip(jax.tree.leaves(new_grads), jax.tree.leaves(old(p, x))):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  finally:
    layers._grad_einsum = plain
  y = jnp.arange(2 * 3 * 5).reshape(2, 3, 5)
  np.testing.assert_array_equal(np.asarray(layers.swap_minor_axes(y)), np.swapaxes(np.asarray(y), 1, 2))


def test_dropout_keeps_one_minus_rate_scaled_and_is_a_function_of_the_key():
  from xlm_jax.model.layers import Dropout
  x = jnp.ones((4, 64, 255))  # an odd last axis: two draws per 32-bit word, one left over
  drop = lambda key, **kw: Dropout(0.1).apply({}, x, deterministic=False, rngs={"dropout": key}, **kw)
  y = np.asarray(drop(jax.random.key(0)))
  np.testing.assert_allclose(np.unique(y), [0.0, 1 / 0.9], rtol=1e-6)
  assert abs(float(np.mean(y > 0)) - 0.9) < 0.005  # 65k draws: 5 standard deviations is 0.006
  np.testing.assert_array_equal(y, np.asarray(drop(jax.random.key(0))))
  assert not np.array_equal(y, np.asarray(drop(jax.random.key(1))))
  assert np.array_equal(np.asarray(Dropout(0.1).apply({}, x, deterministic=True)), np.asarray(x))


def test_unrolled_threefry_equals_jax_threefry_and_draws_are_uniform():
  from jax.extend.random import threefry2x32_p
  from xlm_jax.model.layers import threefry2x32, uniform_16bit
  k = jnp.array([0x13198A2E, 0x03707344], jnp.uint32)
  x0 = jnp.arange(1000, dtype=jnp.uint32) * jnp.uint32(2654435761)
  x1 = jnp.arange(1000, dtype=jnp.uint32)
  ours = jax.jit(threefry2x32)(k[0], k[1], x0, x1)
  theirs = threefry2x32_p.bind(k[0], k[1], x0, x1)
  np.testing.assert_array_equal(np.asarray(ours[0]), np.asarray(theirs[0]))
  np.testing.assert_array_equal(np.asarray(ours[1]), np.asarray(theirs[1]))
  draws = np.asarray(uniform_16bit(jax.random.key(3), (8, 50, 301))).astype(np.int64)
  assert draws.shape == (8, 50, 301)
  counts = np.bincount(draws.ravel() >> 12, minlength=16)  # 16 bins of 4,096 values, 7,525 draws each
  assert np.abs(counts - draws.size / 16).max() < 6 * np.sqrt(draws.size / 16)
  assert abs(np.corrcoef(draws[..., :-1].ravel(), draws[..., 1:].ravel())[0, 1]) < 0.02
  assert not np.array_equal(draws, np.asarray(uniform_16bit(jax.random.key(4), (8, 50, 301))))


def test_sinusoidal_table_matches_formula_and_is_not_a_parameter():
  table = np.asarray(sinusoidal_table(10, 6))
  pos, j = 7, 3
  assert table[pos, j] == pytest.approx(np.cos(pos / 10000 ** (2 * (j // 2) / 6)), abs=1e-6)
  assert table[pos, 2] == pytest.approx(np.sin(pos / 10000 ** (2 / 6)), abs=1e-6)
  p = nn.unbox(init_params(SMALL.replace(sinusoidal_embeddings=True), jax.random.key(0)))
  assert "position_embeddings" not in p


def test_layer_norm_eps_and_exact_gelu_are_xlm_values():
  assert SMALL.layer_norm_eps == 1e-12
  # a model with GELU differs from one with ReLU, and the GELU is the erf form
  from xlm_jax.model.layers import FeedForward
  x = jnp.linspace(-3, 3, 8)[None, None, :]
  ff = FeedForward(16, "gelu")
  p = ff.init(jax.random.key(0), x)
  lin1 = nn.unbox(p)["params"]["lin1"]
  h = x @ lin1["kernel"] + lin1["bias"]
  exact = 0.5 * h * (1 + jax.scipy.special.erf(h / np.sqrt(2)))
  lin2 = nn.unbox(p)["params"]["lin2"]
  np.testing.assert_allclose(ff.apply(p, x), exact @ lin2["kernel"] + lin2["bias"], atol=1e-6)


def test_bad_model_config_is_a_clear_error():
  from xlm_jax.errors import UserError
  with pytest.raises(UserError, match="not divisible"):
    TransformerConfig(vocab_size=10, emb_dim=30, n_layers=1, n_heads=4)
