"""`plan`'s estimate against XLA's TPU compiler, for every preset whose target is a TPU (and
gpt:124m on v5e-16): the estimate within 15% of the compiled memory per chip, and the preset
fits its target by the compiler's count. Slow level: each compile takes minutes on 2 cores."""

import importlib

import pytest

from plm_jax.sizing import aot
from plm_jax.hardware import topology
from plm_jax.sizing.plan import make_plan

GIB = 2 ** 30


def tpu_presets() -> list[tuple[str, str, str]]:
  """(family, size, target) of every preset row sized for a TPU topology."""
  rows = []
  for family in ("bert", "roberta", "albert", "gpt", "xlnet"):
    module = importlib.import_module(f"plm_jax.configs.{family}")
    for size, row in module.SIZES.items():
      target = row.get("target", "")
      if target and topology.get(target).platform == "tpu" and not size.endswith("-paper"):
        rows.append((family, size, target))
  return rows + [("gpt", "124m", "v5e-16")]


@pytest.mark.slow
@pytest.mark.parametrize("family, size, target", tpu_presets(),
                         ids=[f"{f}:{s}@{t}" for f, s, t in tpu_presets()])
def test_the_estimate_is_within_15_percent_of_the_compiled_step(family, size, target):
  config = importlib.import_module(f"plm_jax.configs.{family}").get_config(size)
  estimate = make_plan(config, target).total_bytes / GIB
  compiled = aot.compile_step(config, target)
  assert compiled["fits"], compiled
  assert estimate == pytest.approx(compiled["compiled_gib"], rel=0.15), (estimate, compiled)
