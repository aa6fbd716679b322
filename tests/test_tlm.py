"""TLM examples, packing and batches, spelled out on a hand-written pair and checked through the whole path."""
import numpy as np

from xlm_jax.data.masking import MaskingConfig
from xlm_jax.data.mixture import Entry, Mixture, StepSpec, mlm_targets, objectives
from xlm_jax.data.packing import first_fit_decreasing, tlm_example
from xlm_jax.data.rows import PairIndex, TlmRows
from xlm_jax.data.stores import TokenStore

EOS, PAD = 1, 2


def pack(examples, length, pad_id):
  """Two hand-made pairs through the real row builder: TlmRows placing them in order in one row."""
  first = TokenStore.from_sentences([e[0] for e in examples], EOS)
  second = TokenStore.from_sentences([e[1] for e in examples], EOS)
  rows = TlmRows(PairIndex(first, second, length), swap=False, lang1=0, lang2=1, length=length, pad_id=pad_id)
  out = rows.eval_rows(1)
  return tuple(out[k][0] for k in ("tokens", "positions", "langs", "segment_ids"))


def test_hand_written_pair_through_packing():
  # "the cat" (en, id 0) / "le chat" (fr, id 1) as hand-picked token ids
  en, fr = np.array([10, 11]), np.array([20, 21, 22])
  tokens, positions, langs = tlm_example(en, fr, 0, 1, EOS)
  np.testing.assert_array_equal(tokens, [1, 10, 11, 1, 1, 20, 21, 22, 1])
  np.testing.assert_array_equal(positions, [0, 1, 2, 3, 0, 1, 2, 3, 4])   # restart at the second sentence
  np.testing.assert_array_equal(langs, [0, 0, 0, 0, 1, 1, 1, 1, 1])

  t, p, l, s = pack([(en, fr), (np.array([30]), np.array([40]))], 16, PAD)   # a second pair packed after it
  np.testing.assert_array_equal(t, [1, 10, 11, 1, 1, 20, 21, 22, 1, 1, 30, 1, 1, 40, 1, PAD])
  np.testing.assert_array_equal(t[:9], tokens)  # the row builder and tlm_example agree
  np.testing.assert_array_equal(p, [0, 1, 2, 3, 0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 0])
  np.testing.assert_array_equal(l, [0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1])
  np.testing.assert_array_equal(s, [1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 0])
  eligible = s > 0  # both halves can be masked, padding never
  np.testing.assert_array_equal(eligible, [True] * 15 + [False])
  # segments are not derived from positions: position 0 occurs inside segment 1 (its second half)
  assert p[4] == 0 and s[4] == s[3]


def test_packed_pair_attends_within_itself_only():
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from xlm_jax.model import Transformer, TransformerConfig, init_params
  cfg = TransformerConfig(vocab_size=50, emb_dim=16, n_layers=1, n_heads=2, n_langs=2)
  params = nn.unbox(init_params(cfg, jax.random.key(0)))
  model = Transformer(cfg)

  def states(fr_tokens, other_tokens):
    t, p, l, s = pack([(np.array([10, 11]), np.array(fr_tokens)), (np.array(other_tokens), np.array([40]))], 16,
                      PAD)
    return np.asarray(model.apply({"params": params}, *(jnp.array(x[None]) for x in (t, p, l, s)), method="encode"))

  base = states([20, 21, 22], [30])
  changed_fr = states([20, 21, 23], [30])
  changed_other = states([20, 21, 22], [31])
  assert np.abs(base[0, 1:3] - changed_fr[0, 1:3]).max() > 1e-4    # English sees its French translation
  np.testing.assert_allclose(base[0, :9], changed_other[0, :9], atol=1e-6)  # never the next example


def test_tlm_batches_keep_the_layout_through_masking():
  rng = np.random.default_rng(0)
  pairs = [(rng.integers(6, 50, size=rng.integers(2, 9)), rng.integers(6, 50, size=rng.integers(2, 9)))
           for _ in range(40)]
  index = PairIndex(TokenStore.from_sentences([a for a, _ in pairs], EOS),
                    TokenStore.from_sentences([b for _, b in pairs], EOS), 48)
  entry = Entry(StepSpec("mlm", ("fr", "en")), TlmRows(index, swap=True, lang1=1, lang2=0, length=48, pad_id=PAD))
  masking = mlm_targets(MaskingConfig(50, 5, tuple(range(6))), 48)
  batches = Mixture(objectives([entry], {"tlm": masking}, -1.0), batch_size=4, seed=0, group_rows=4)
  b = batches.batch(3)["tlm"]
  for row in range(4):
    seg, pos, lang = b["segment_ids"][row], b["positions"][row], b["langs"][row]
    real = seg > 0
    assert real.sum() >= 30   # packed, not padded
    assert np.all(np.diff(seg[real]) >= 0) and np.all(seg[~real] == 0) and np.all(real[:real.sum()])
    for k in np.unique(seg[real]):
      where = np.flatnonzero(seg == k)
      starts = where[pos[where] == 0]
      assert len(starts) == 2    # two halves, each starting at position 0
      half1, half2 = np.arange(starts[0], starts[1]), np.arange(starts[1], where[-1] + 1)
      assert np.all(lang[half1] == 1) and np.all(lang[half2] == 0)    # fr first, then en
      np.testing.assert_array_equal(pos[half2], np.arange(len(half2)))
    chosen = b["pred_index"][row][b["pred_weights"][row] > 0]
    assert np.all(seg[chosen] > 0)
    halves_hit = {int(lang[i]) for i in chosen}
    assert halves_hit == {0, 1} or len(chosen) < 4


def test_first_fit_decreasing():
  row, start = first_fit_decreasing(np.array([5, 30, 20, 12, 40, 9]), 2, [48])
  np.testing.assert_array_equal(row, [0, 1, -1, 1, 0, -1])   # 20 and 9 fit nowhere after 40 and 30
  np.testing.assert_array_equal(start[:, 0][row >= 0], [40, 0, 30, 0])
  row, _ = first_fit_decreasing(np.array([10, 10, 10]), 1, [25])
  np.testing.assert_array_equal(row, [0, 0, -1])
  # two sides (NMT): an example goes where both its source and its target fit
  row, start = first_fit_decreasing(np.array([[10, 2], [3, 9], [2, 4], [4, 4]]), 2, [12, 10])
  np.testing.assert_array_equal(row, [0, 1, 0, -1])   # [4, 4]: the source fits row 1, the target does not
  np.testing.assert_array_equal(start[:3], [[0, 0], [0, 0], [10, 2]])
