"""Attention kernels agree: XLA, splash (Pallas interpret mode on CPU, also under a mesh), and
the mask forms each one takes (causal-only, padding, packed segments); scanned layers equal
unrolled ones."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import family_config
from plm_jax import families, parallel
from plm_jax.models import ModelConfig
from plm_jax.models.layers import AttentionMask, attention
from plm_jax.models.partitioning import axis_rules

B, T, N, H = 2, 128, 4, 16


def qkv():
  keys = jax.random.split(jax.random.key(0), 3)
  return [jax.random.normal(k, (B, T, N, H), jnp.float32) for k in keys]


def reference(q, k, v, allowed):
  """Softmax attention written out, with allowed [B, T, T] (True = may attend)."""
  logits = jnp.einsum("btnh,bsnh->bnts", q, k) * H ** -0.5
  logits = jnp.where(allowed[:, None], logits, -1e30)
  return jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(logits, -1), v)


def masks():
  lengths = np.array([T, 90])
  padding = jnp.asarray(np.arange(T)[None] < lengths[:, None])
  segments = jnp.asarray(np.repeat([[1, 2, 3, 0]], T // 4, axis=1).reshape(B // 2, T)
                         .repeat(B, 0)[:B])
  causal = np.tril(np.ones((T, T), bool))[None]
  pad2 = np.asarray(padding)[:, None, :] & np.asarray(padding)[:, :, None]
  same = np.asarray(segments)[:, :, None] == np.asarray(segments)[:, None, :]
  return {
      "causal": (AttentionMask(causal=True), np.broadcast_to(causal, (B, T, T)), None),
      "padding": (AttentionMask(padding=padding), pad2 | ~np.asarray(padding)[:, :, None],
                  np.asarray(padding)),
      "packed_causal": (AttentionMask(segment_ids=segments, causal=True), same & causal, None),
  }


@pytest.mark.parametrize("impl", ["xla", "splash"])
@pytest.mark.parametrize("form", ["causal", "padding", "packed_causal"])
def test_kernels_equal_the_written_out_softmax(impl, form):
  q, k, v = qkv()
  mask, allowed, real_rows = masks()[form]
  out = attention(q, k, v, mask, implementation=impl, dropout_rate=0.0, keys=None)
  expected = reference(q, k, v, jnp.asarray(allowed))
  if real_rows is not None:                       # padded queries' outputs are never used
    out, expected = out * real_rows[..., None, None], expected * real_rows[..., None, None]
  np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=2e-5)


def test_splash_falls_back_to_xla_off_its_tile():
  """The kernel's tiles are multiples of 128: a 64-token sequence goes to XLA, not an error."""
  q, k, v = (x[:, :64] for x in qkv())
  mask = AttentionMask(causal=True)
  out = attention(q, k, v, mask, implementation="splash", dropout_rate=0.0, keys=None)
  expected = attention(q, k, v, mask, implementation="xla", dropout_rate=0.0, keys=None)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))


def test_splash_gradients_match_xla():
  q, k, v = qkv()
  mask = AttentionMask(causal=True)
  grads = {impl: jax.grad(lambda q, k, v: jnp.sum(attention(
      q, k, v, mask, implementation=impl, dropout_rate=0.0, keys=None) ** 2), (0, 1, 2))(q, k, v)
      for impl in ("xla", "splash")}
  for a, b in zip(grads["xla"], grads["splash"]):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-4)


def test_splash_under_a_mesh_runs_per_shard():
  """Batch over data x fsdp, heads over tensor: shard_map gives each device its part."""
  config = family_config("gpt", **{"mesh.data": 1, "mesh.fsdp": 2, "mesh.tensor": 4})
  mesh = parallel.mesh_for(config)
  q, k, v = qkv()
  segments = jnp.ones((B, T), jnp.int32).at[1, 100:].set(0)
  mask = AttentionMask(padding=segments.astype(bool), causal=True)
  with axis_rules(parallel.rules_dict(config), mesh):
    out = jax.jit(lambda q, k, v: attention(q, k, v, mask, implementation="splash",
                                            dropout_rate=0.0, keys=None))(q, k, v)
  expected = attention(q, k, v, mask, implementation="xla", dropout_rate=0.0, keys=None)
  np.testing.assert_allclose(np.asarray(out)[:, :100], np.asarray(expected)[:, :100], atol=2e-5)


def test_gpt_without_padding_mask_equals_padded_mask_on_real_tokens():
  """Why causal LM training drops the padding mask: rows are right-padded, so under the causal
  mask no real token sees padding either way."""
  cfg = ModelConfig(family="gpt", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                    mlp_dim=64, max_position=16, dropout_rate=0.0)
  model = families.build(cfg, nnx.Rngs(0))
  ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 16)))
  padding = jnp.asarray(np.arange(16)[None] < np.array([[16], [9]])).astype(jnp.int32)
  with_mask = model.hidden_states(ids, padding)
  causal_only = model.hidden_states(ids, None)
  np.testing.assert_allclose(np.asarray(causal_only[1, :9]), np.asarray(with_mask[1, :9]),
                             atol=1e-5)
  np.testing.assert_allclose(np.asarray(causal_only[0]), np.asarray(with_mask[0]), atol=1e-5)


def stack_layers(tree):
  """The unrolled layout -> the stacked one (what plm_jax.run.checkpoint converts), written out."""
  if not isinstance(tree, dict):
    return tree
  out = {}
  for k, v in tree.items():
    if k == "layers" and isinstance(v, dict) and len(v) > 1 and all(isinstance(i, int) for i in v):
      v = jax.tree.map(lambda *xs: jnp.stack(xs), *[v[i] for i in sorted(v)])
    out[k] = stack_layers(v)
  return out


@pytest.mark.parametrize("family,remat", [
    (family, remat) for family in ("gpt", "bert", "albert") for remat in (False, True)]
    + [("xlnet", True)])        # XLNet's two streams through remat and scan: one case for CI time
def test_scanned_layers_equal_unrolled(family, remat):
  """One seed gives the same weights in both layouts (stacked = the unrolled ones stacked);
  with the same dropout keys the loss and every gradient agree to rounding."""
  cfg = ModelConfig(family=family, vocab_size=64, hidden_size=32, num_layers=3, num_heads=4,
                    mlp_dim=64, max_position=16, nsp_head=family != "gpt",
                    shared_layers=family == "albert",
                    embedding_size=16 if family == "albert" else 0, remat=remat)
  ids = jnp.asarray(np.random.default_rng(1).integers(5, 64, (2, 16)))
  padding = jnp.ones((2, 16), jnp.int32).at[1, 12:].set(0)

  def loss(params, graphdef):
    model = nnx.merge(graphdef, params)
    key = jax.random.key(3)
    if family == "gpt":
      return jnp.sum(model(ids, padding, dropout_rng=key)["logits"] ** 2) / 1e3
    out = model(ids, jnp.zeros_like(ids), padding, jnp.array([[1, 2], [3, 4]]), dropout_rng=key)
    return jnp.sum(out["mlm_logits"] ** 2) / 1e3

  results = []
  for scan in (True, False):
    graphdef, params = nnx.split(families.build(dataclasses.replace(cfg, scan_layers=scan),
                                                nnx.Rngs(0)), nnx.Param)
    value, grads = jax.value_and_grad(loss)(params, graphdef)
    results.append((nnx.to_pure_dict(params), value, nnx.to_pure_dict(grads)))
  (pa, la, ga), (pb, lb, gb) = results
  assert jax.tree.structure(stack_layers(pb)) == jax.tree.structure(pa)
  for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(stack_layers(pb))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  np.testing.assert_allclose(float(la), float(lb), rtol=1e-5)
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(stack_layers(gb))):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)
