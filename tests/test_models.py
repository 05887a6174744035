"""Models: masks behave, the MLM head gathers, every parameter has logical axes, sizes match."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import family_config
from plm_jax import families, models, parallel
from plm_jax.models.bert import gather_positions
from plm_jax.families import model_config
from plm_jax.models.config import padded_vocab
from plm_jax.models.layers import AttentionMask


def small(family, **kw):
  cfg = dict(family=family, vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64,
             max_position=16, dropout_rate=0.0)
  cfg.update(kw)
  return models.ModelConfig(**cfg)


def test_gpt_is_causal():
  model = families.build(small("gpt"), nnx.Rngs(0))
  ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 16)))
  changed = ids.at[:, 10].set((ids[:, 10] + 1) % 64)
  a, b = model(ids)["logits"], model(changed)["logits"]
  np.testing.assert_allclose(a[:, :10], b[:, :10], atol=1e-6)
  assert not np.allclose(a[:, 10:], b[:, 10:])


def test_bert_padding_does_not_leak():
  model = families.build(small("bert"), nnx.Rngs(0))
  ids = jnp.asarray(np.random.default_rng(0).integers(5, 64, (2, 16)))
  mask = jnp.asarray(np.arange(16)[None, :] < np.array([[10], [16]])).astype(jnp.int32)
  other = jnp.where(mask == 1, ids, 7)
  seq_a, _ = model.encoder(ids, None, mask)
  seq_b, _ = model.encoder(other, None, mask)
  np.testing.assert_allclose(seq_a[0, :10], seq_b[0, :10], atol=1e-5)
  np.testing.assert_allclose(seq_a[1], seq_b[1], atol=1e-6)


def test_segment_mask_blocks_attention_across_packed_documents():
  model = families.build(small("gpt"), nnx.Rngs(0))
  ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (1, 16)))
  seg = jnp.asarray([[1] * 8 + [2] * 8])
  pos = jnp.asarray([list(range(8)) * 2])
  packed = model(ids, segment_ids=seg, positions=pos)["logits"]
  alone = model(ids[:, 8:])["logits"]
  np.testing.assert_allclose(packed[:, 8:], alone, atol=1e-5)


def test_attention_mask_dense():
  m = AttentionMask(padding=jnp.array([[1, 1, 0]], bool), causal=True).dense()
  expected = np.array([[1, 0, 0], [1, 1, 0], [1, 1, 0]], bool)
  np.testing.assert_array_equal(m[0, 0], expected)


def test_mlm_head_equals_full_logits_at_the_chosen_positions():
  model = families.build(small("bert"), nnx.Rngs(0))
  ids = jnp.asarray(np.random.default_rng(0).integers(5, 64, (2, 16)))
  positions = jnp.asarray([[1, 4, 9], [0, 2, 15]])
  out = model(ids, jnp.zeros_like(ids), jnp.ones_like(ids), positions)
  seq, _ = model.encoder(ids, jnp.zeros_like(ids), jnp.ones_like(ids))
  table, bias = model.lm_output()
  full = model.mlm.features(seq) @ table.T + bias
  np.testing.assert_allclose(out["mlm_logits"], gather_positions(full, positions), atol=1e-5)
  assert out["mlm_logits"].shape == (2, 3, 64)


def test_mlm_decoder_is_tied_to_word_embeddings():
  model = families.build(small("bert"), nnx.Rngs(0))
  names = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  assert not any("decoder" in n for n in names)
  gpt = families.build(small("gpt"), nnx.Rngs(0))
  assert not any("lm_head" in "/".join(map(str, p))
                 for p, _ in nnx.to_flat_state(nnx.state(gpt, nnx.Param)))


@pytest.mark.parametrize("family", ["bert", "gpt", "xlnet"])
def test_every_parameter_has_logical_axes(family):
  model = nnx.eval_shape(lambda: families.build(small(family), nnx.Rngs(0)))
  for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    axes = v.get_metadata().get("axes")
    assert axes is not None and len(axes) == v.ndim, path


@pytest.mark.parametrize("family,size,count", [
    # Exact parameter counts of transformers' BertModel and GPT2LMHeadModel.
    ("bert", "base", 109_482_240), ("bert", "large", 335_141_888),
    ("gpt", "124m", 124_439_808), ("gpt", "355m", 354_823_168), ("gpt", "774m", 774_030_080),
    ("gpt", "1.5b", 1_557_611_200),
])
def test_published_sizes(family, size, count):
  from configs import bert, gpt
  config = (bert if family == "bert" else gpt).get_config(size)
  # Published counts use the unpadded vocabulary (30,522 / 50,257).
  cfg = model_config(config, config.data.vocab_size)
  model = nnx.eval_shape(lambda: families.build(cfg, nnx.Rngs(0)))
  n = sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
  if family == "bert":  # BertForPreTraining adds the MLM transform/bias and NSP to BERT's 110M
    h, v = config.model.hidden_size, config.data.vocab_size
    n -= h * h + h + 2 * h + v + 2 * h + 2
  assert n == count
  assert padded_vocab(config, config.data.vocab_size) % 128 == 0


def test_param_specs_follow_rules():
  config = family_config("bert")
  model = nnx.eval_shape(lambda: families.build(small("bert"), nnx.Rngs(0)))
  specs = parallel.param_specs(nnx.state(model, nnx.Param), parallel.rules_dict(config))
  word = specs["encoder"]["embeddings"]["word"]["embedding"]
  word = word.value if hasattr(word, "value") else word
  assert tuple(word) == ("tensor", "fsdp")
  q = specs["encoder"]["layers"]["attention"]["qkv"]["kernel"]     # stacked: [L, E, 3, N, H]
  q = q.value if hasattr(q, "value") else q
  assert tuple(q) == (None, "fsdp", None, "tensor", None)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = families.build(small("gpt", dtype="bfloat16"), nnx.Rngs(0))
  out = model(jnp.zeros((1, 8), jnp.int32))["logits"]
  assert out.dtype == jnp.float32
  assert model.wte.embedding[...].dtype == jnp.float32
