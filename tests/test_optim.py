"""The optimizer as configured: schedule values, clipping, AdamW's settings, decay by role."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from helpers import family_config
from plm_jax import families
from plm_jax.families import model_config
from plm_jax.optim import decay_mask, make_optimizer, make_schedule


def optim(**kw):
  o = ml_collections.ConfigDict(dict(learning_rate=1e-3, warmup_steps=10, schedule="linear",
                                     end_lr_fraction=0.0, weight_decay=0.0, b1=0.9, b2=0.999,
                                     eps=1e-6, clip_norm=0.0, grad_accum_steps=1))
  o.update(kw)
  return o


@pytest.mark.parametrize("schedule,expected", [
    # step:            0      5       10      55                 100
    ("linear", [0.0, 5e-4, 1e-3, 1e-3 * (1 - 45 / 90), 0.0]),
    ("cosine", [0.0, 5e-4, 1e-3, 1e-3 * 0.5 * (1 + np.cos(np.pi * 45 / 90)), 0.0]),
    ("constant", [0.0, 5e-4, 1e-3, 1e-3, 1e-3]),
    # BERT's: decay counted over all 100 steps from 0, so 9e-4 right after the warmup.
    ("linear_total", [0.0, 5e-4, 1e-3 * (1 - 10 / 100), 1e-3 * (1 - 55 / 100), 0.0]),
])
def test_schedule_values(schedule, expected):
  fn = make_schedule(optim(schedule=schedule), 100)
  got = [float(fn(s)) for s in (0, 5, 10, 55, 100)]
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-9)


def test_bert_schedule_jumps_to_the_decayed_rate_after_warmup():
  fn = make_schedule(optim(schedule="linear_total", warmup_steps=10), 100)
  assert float(fn(9)) == pytest.approx(9e-4) and float(fn(10)) == pytest.approx(9e-4)
  assert float(fn(11)) == pytest.approx(1e-3 * 0.89)


def test_adamw_two_steps_by_hand_with_clipping_and_decay():
  """Two updates against AdamW written out: each gradient clipped to clip_norm by the global
  norm, bias-corrected moments with b1, b2 and eps, decoupled weight decay on the matrix only."""
  lr, b1, b2, eps, wd, clip = 0.1, 0.8, 0.9, 1e-3, 0.5, 1.0
  o = optim(learning_rate=lr, warmup_steps=0, schedule="constant", b1=b1, b2=b2, eps=eps,
            weight_decay=wd, clip_norm=clip)
  tx, _ = make_optimizer(o, 10)
  params = {"w": {"kernel": jnp.array([[1.0, -2.0]])}, "b": {"bias": jnp.array([0.5])}}
  steps = [{"w": {"kernel": jnp.array([[3.0, 0.0]])}, "b": {"bias": jnp.array([4.0])}},
           {"w": {"kernel": jnp.array([[0.1, 0.2]])}, "b": {"bias": jnp.array([-0.2])}}]
  state = tx.init(params)
  ref = {k: np.asarray(v[leaf]) for k, v in params.items() for leaf in v}
  m = {k: 0.0 for k in ref}
  v = {k: 0.0 for k in ref}
  for t, grads in enumerate(steps, 1):
    updates, state = tx.update(grads, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    flat = {k: np.asarray(g[leaf]) for k, g in grads.items() for leaf in g}
    norm = np.sqrt(sum(float(np.sum(g * g)) for g in flat.values()))
    for k, g in flat.items():
      g = g * min(1.0, clip / norm)
      m[k] = b1 * m[k] + (1 - b1) * g
      v[k] = b2 * v[k] + (1 - b2) * g * g
      step = m[k] / (1 - b1 ** t) / (np.sqrt(v[k] / (1 - b2 ** t)) + eps)
      ref[k] = ref[k] - lr * (step + (wd * ref[k] if k == "w" else 0.0))
  np.testing.assert_allclose(np.asarray(params["w"]["kernel"]), ref["w"], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(params["b"]["bias"]), ref["b"], rtol=1e-5)


@pytest.mark.parametrize("family", ["bert", "roberta", "albert", "gpt", "xlnet"])
@pytest.mark.parametrize("classify", [False, True])
@pytest.mark.parametrize("scan", [True, False])
def test_every_parameter_of_every_family_decays_by_role(family, classify, scan):
  """Kernels and embedding tables decay; biases, LayerNorm scales and offsets never do, whatever
  their rank (stacked layers give them a leading axis; the fused q/k/v bias is [3, N, H])."""
  if classify and family == "gpt":
    pytest.skip("GPT has no classifier")
  config = family_config(family, **{"model.scan_layers": scan})
  if classify:
    with config.unlocked():
      config.objective.name = "classify"
      from plm_jax.configlib import classify_group
      config.classify = classify_group(dict(task="builtin", num_classes=3))
  model = nnx.eval_shape(lambda: families.build(model_config(config, 256), nnx.Rngs(0)))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  roles = {"kernel": True, "embedding": True, "bias": False, "scale": False,
           # XLNet's relative-attention biases, per head, and its LM head's bias
           "r_w_bias": False, "r_r_bias": False, "r_s_bias": False, "lm_bias": False}
  seen = set()
  for path, decays in jax.tree_util.tree_leaves_with_path(decay_mask(params)):
    name = path[-1].key
    assert name in roles, f"parameter {path} has no known role"
    assert decays == roles[name], path
    seen.add(name)
  assert seen >= {"kernel", "embedding", "bias", "scale"}


def test_lamb_scales_each_update_by_its_trust_ratio():
  """optim.optimizer=lamb (ALBERT's lamb_optimizer.py): the AdamW direction (with decoupled decay
  on matrices) rescaled per matrix by ||w|| / ||direction||; biases and LayerNorm take the plain
  direction (exclude_from_layer_adaptation = exclude_from_weight_decay: "LayerNorm", "bias")."""
  lr, b1, b2, eps, wd = 0.01, 0.9, 0.99, 1e-6, 0.1
  o = optim(optimizer="lamb", learning_rate=lr, warmup_steps=0, schedule="constant", b1=b1,
            b2=b2, eps=eps, weight_decay=wd)
  tx, _ = make_optimizer(o, 10)
  params = {"w": {"kernel": jnp.array([[1.0, -2.0], [0.5, 3.0]])},
            "b": {"bias": jnp.array([0.5, 1.0])}}
  grads = {"w": {"kernel": jnp.array([[0.3, 0.1], [-0.2, 0.4]])},
           "b": {"bias": jnp.array([0.2, -0.1])}}
  updates, _ = tx.update(grads, tx.init(params), params)
  for key, leaf, decays in (("w", "kernel", True), ("b", "bias", False)):
    w, g = np.asarray(params[key][leaf]), np.asarray(grads[key][leaf])
    direction = g / (np.abs(g) + eps) + (wd * w if decays else 0.0)   # first step: m/v = g/|g|
    ratio = np.linalg.norm(w) / np.linalg.norm(direction) if decays else 1.0
    np.testing.assert_allclose(np.asarray(updates[key][leaf]), -lr * ratio * direction,
                               rtol=1e-4)
