"""Generation with the key/value cache, sampling filters, fill-mask, decode benchmark."""


import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from plm_jax import families, models
from plm_jax.generate import SamplingConfig, filter_logits, generate, greedy


def tiny_gpt(scan_layers: bool = True):
  cfg = models.ModelConfig(family="gpt", vocab_size=97, hidden_size=32, num_layers=2,
                           num_heads=4, mlp_dim=64, max_position=96, dropout_rate=0.0,
                           layer_norm_eps=1e-5, scan_layers=scan_layers)
  return families.build(cfg, nnx.Rngs(0))


@pytest.fixture(scope="module")
def gpt():
  return tiny_gpt()


def test_stacked_and_unrolled_layers_generate_the_same_tokens():
  """The stacked cache ([L, B, S, N, H], written in place) and the per-layer one agree."""
  prompts = [[5, 6, 7, 8], [9, 10]]
  a = generate(tiny_gpt(True), prompts, SamplingConfig(max_new_tokens=12))
  b = generate(tiny_gpt(False), prompts, SamplingConfig(max_new_tokens=12))
  assert a == b


def test_cached_greedy_equals_recomputing_the_prefix(gpt):
  rng = np.random.default_rng(0)
  prompts = [list(rng.integers(1, 97, n)) for n in (5, 17, 3)]   # left-padded into one bucket
  cached = generate(gpt, prompts, SamplingConfig(max_new_tokens=24))
  uncached = generate(gpt, prompts, SamplingConfig(max_new_tokens=24), use_cache=False)
  for prompt, a, b in zip(prompts, cached, uncached):
    reference = greedy(gpt, np.array([prompt]), 24)[0, len(prompt):].tolist()
    assert a == reference and b == reference


def test_sampling_is_reproducible_from_the_seed(gpt):
  prompts = [[1, 2, 3], [4, 5]]
  def run(seed):
    return generate(gpt, prompts, SamplingConfig(max_new_tokens=12, temperature=1.0, top_k=20,
                                                 top_p=0.9, seed=seed))
  assert run(3) == run(3)
  assert run(3) != run(4)


def test_eos_stops_a_row(gpt):
  prompt = [7, 30, 55, 2]
  sampling = dict(max_new_tokens=16, temperature=1.0, seed=5)   # diverse, and reproducible
  first = generate(gpt, [prompt], SamplingConfig(**sampling))[0]
  cut = next(i for i in range(1, 16) if first[i] not in first[:i])
  out = generate(gpt, [prompt], SamplingConfig(**sampling, eos_id=first[cut]))[0]
  assert out == first[:cut + 1]


def test_top_k_and_top_p_filters():
  logits = jnp.log(jnp.array([[0.5, 0.25, 0.15, 0.1]]))
  k2 = np.asarray(filter_logits(logits, 2, 1.0))
  assert np.isfinite(k2[0, :2]).all() and (k2[0, 2:] < -1e30).all()
  p = np.asarray(filter_logits(logits, 0, 0.7))   # 0.5 + 0.25 reach 0.7: keep two
  assert (p[0, :2] > -1e30).all() and (p[0, 2:] < -1e30).all()
  tiny = np.asarray(filter_logits(logits, 0, 0.01))  # the best token always stays
  assert tiny[0, 0] > -1e30 and (tiny[0, 1:] < -1e30).all()


def test_prompt_too_long_is_an_error(gpt):
  with pytest.raises(ValueError, match="exceeds the model's 96 positions"):
    generate(gpt, [[1] * 90], SamplingConfig(max_new_tokens=10))
