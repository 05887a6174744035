"""Sizing a config's width to a parameter count (plm_jax/sizing/param_match.py): each check counts
abstractly (no parameter is allocated), at a small vocabulary."""

import pytest

from plm_jax.sizing import param_match
from plm_jax.configs import load as load_config_file
from plm_jax.errors import ConfigError
from plm_jax.sizing.param_match import count_params, match_width, with_width


def preset(spec: str):
  config = load_config_file(spec)
  config.data.vocab_size = 1024
  return config


@pytest.mark.parametrize("spec,hidden", [("bert:tiny", 96), ("xlnet:tiny", 200)])
def test_a_width_count_is_matched_by_that_width(spec, hidden, monkeypatch):
  config = preset(spec)
  target = count_params(with_width(config, hidden))
  calls = []
  monkeypatch.setattr(param_match, "count_params",
                      lambda c: calls.append(c.model.hidden_size) or count_params(c))
  assert match_width(config, target) == (hidden, target)
  assert len(calls) < 10, calls           # a fit and a check, not a scan of widths


@pytest.mark.parametrize("spec", ["albert:tiny", "gpt:tiny"])
def test_other_families_match_bert_within_one_width_step(spec):
  target = count_params(preset("bert:tiny"))
  config = preset(spec)
  heads = config.model.num_heads
  hidden, params = match_width(config, target)
  assert hidden % heads == 0 and params == count_params(with_width(config, hidden))
  for neighbour in (hidden - heads, hidden + heads):
    if neighbour > 0:
      assert abs(params - target) <= abs(count_params(with_width(config, neighbour)) - target)


def test_with_width_copies_and_keeps_the_rest():
  config = preset("albert:tiny")
  config.model.mlp_dim = 500              # a ratio mlp_dim / hidden_size of 3.90625
  config.lock()
  before = config.to_dict()
  out = with_width(config, 100)
  assert config.to_dict() == before       # the input is untouched
  assert (out.model.hidden_size, out.model.mlp_dim) == (100, 391)      # 390.625, rounded
  assert with_width(config, 64).model.mlp_dim == 250
  changed = out.to_dict()
  for field in ("hidden_size", "mlp_dim"):
    changed["model"].pop(field), before["model"].pop(field)
  assert changed == before                # heads, layers, embedding_size and the rest
  with pytest.raises(ConfigError, match="multiple of model.num_heads=4"):
    with_width(config, 66)


def test_an_unreachable_target_is_one_line():
  config = preset("bert:tiny")
  with pytest.raises(ConfigError, match="smallest") as e:
    match_width(config, 1000)
  assert "\n" not in str(e.value) and "bert size tiny" in str(e.value)
