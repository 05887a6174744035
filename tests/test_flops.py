"""FLOPs as the step computes them (plm_jax/hardware/flops.py) against XLA's own count of each family's
compiled train step, and `compare`'s budget spending the same XLA-counted compute on every
family."""

import functools

import jax
import pytest

from plm_jax import compare, parallel
from plm_jax.hardware import flops
from plm_jax.configs import compare as compare_config
from plm_jax.data import loader
from plm_jax.models.config import padded_vocab
from plm_jax.trainer import Trainer

FAMILIES = ("bert", "roberta", "albert", "gpt", "xlnet")


def xla_step_flops(config) -> float:
  """XLA's cost analysis of the train step compiled on this CPU, the layers unrolled (a loop's
  body would be counted once)."""
  with config.unlocked():
    config.model.scan_layers = False
  vocab = padded_vocab(config, config.data.vocab_size)
  trainer = Trainer.create(config, parallel.mesh_for(config, jax.devices()[:1]), vocab)
  cost = trainer.compile_train_step().cost_analysis()
  return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def formula(config) -> float:
  return flops.computed_flops_per_step(
      loader.step_shape(config, padded_vocab(config, config.data.vocab_size)))


@functools.cache
def tiny_budget():
  c = compare_config.get_config("tiny")
  return c, compare.plan_budget(c)[1]


@pytest.mark.parametrize("family", FAMILIES)
def test_formula_is_xlas_count_of_the_compiled_step(family):
  """compare:tiny's pretraining step of each family, and a wider, shorter one of its own tiny
  preset (another vocabulary, batch, width and length), without dropout (its random bits are
  not counted: their cost is the generator's)."""
  c, costs = tiny_budget()
  wide = compare.pretrain_config(c, family, 0, 10)
  with wide.unlocked():
    wide.model.update({"hidden_size": 192, "mlp_dim": 768, "num_heads": 6})
    wide.data.max_seq_length, wide.train.batch_size = 32, 8
  for config in (compare.family_config(c, costs, family, 0), wide):
    with config.unlocked():
      config.model.dropout_rate = config.model.attention_dropout_rate = 0.0
    assert formula(config) == pytest.approx(xla_step_flops(config), rel=0.05), \
        (family, config.model.hidden_size)


def test_compare_tiny_spends_the_same_xla_counted_compute():
  """Each family's XLA-counted step (dropout as configured) times the steps compare:tiny gives
  it: within 10% of each other (the references' convention gave 1.11e12 to 3.88e12)."""
  c, costs = tiny_budget()
  spent = {f: xla_step_flops(compare.family_config(c, costs, f, 0)) * costs[f]["steps"]
           for f in c.families}
  assert max(spent.values()) <= 1.10 * min(spent.values()), spent
