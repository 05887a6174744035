"""`plm-jax compare`: the matched budget, the aggregation over seeds, and the command end to end
(the CI smoke version: two families, one seed, a few steps; the whole tiny run is slow)."""

import math
import os
import re

import jax
import numpy as np
import pytest

from helpers import family_config
from plm_jax import cli, compare, flops
from plm_jax.configs import compare as compare_config
from plm_jax.plan import make_plan
from plm_jax.trainer import AbstractState


def run_cli(*args):
  return cli.main(["plm-jax", *args])


def test_mean_and_sample_spread_over_seeds():
  assert compare.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
  assert compare.mean_std([0.5]) == (0.5, 0.0)
  assert compare.mean_std([1.0, float("nan"), 3.0]) == (2.0, math.sqrt(2.0))
  assert all(math.isnan(v) for v in compare.mean_std([]))


def test_steps_spend_the_same_flops_or_tokens():
  c = compare_config.get_config("smoke")
  c.families = ["bert", "gpt", "xlnet"]
  budget, costs = compare.plan_budget(c)
  # independently: `plan`'s step FLOPs of each family's pretraining config
  step = {f: make_plan(compare.pretrain_config(c, f, 0), num_devices=1).flops_per_step
          for f in c.families}
  assert budget == pytest.approx(step[c.reference_family] * c.reference_steps)
  for f in c.families:
    assert costs[f]["steps"] == max(1, round(budget / step[f])), f
    assert costs[f]["step_flops"] == pytest.approx(step[f])
  c.match = "tokens"
  budget, costs = compare.plan_budget(c)
  tokens = c.pretrain.batch_size * c.pretrain.max_seq_length
  assert costs["bert"]["steps"] == costs["gpt"]["steps"] == c.reference_steps
  assert budget == tokens * c.reference_steps


def test_bad_compare_configs_are_one_line(tmp_path, capsys):
  for flag in ("--config.match=params", "--config.bench=sometimes"):
    assert run_cli("compare", "--config", "compare:smoke", "--workdir", str(tmp_path),
                   flag) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("plm-jax compare: error:") and "\n" not in err, err
  assert run_cli("compare", "--config", "compare:smoke", "--workdir", str(tmp_path),
                 "--config.families=['bert','t5']") == 2


def _checkpoints(directory):
  return sorted(os.path.join(root, d) for root, dirs, _ in os.walk(directory) for d in dirs
                if os.path.basename(root) in ("checkpoints", "best"))


def _check_report(directory, families):
  report = open(os.path.join(directory, "report.md"), encoding="utf-8").read()
  for family in families:
    rows = [line for line in report.splitlines() if line.startswith(f"| {family} |")]
    assert len(rows) >= 3, (family, report)       # compute, pretraining, downstream
    numbers = [float(x) for row in rows for x in re.findall(r"-?\d+\.\d+(?:e[+-]\d+)?", row)]
    assert numbers and all(math.isfinite(x) for x in numbers), rows
  for name in ("loss_vs_flops.png", "params.png", "downstream_builtin.png"):
    assert os.path.getsize(os.path.join(directory, "plots", name)) > 1000
    assert f"plots/{name}" in report
  return report


@pytest.mark.e2e
def test_compare_smoke_reports_and_resumes(tmp_path, capsys):
  directory = str(tmp_path / "cmp")
  assert run_cli("compare", "--config", "compare:smoke", "--workdir", directory) == 0
  c = compare_config.get_config("smoke")
  report = _check_report(directory, c.families)
  assert "## Measured strengths and weaknesses" in report
  before = _checkpoints(directory)
  capsys.readouterr()
  assert run_cli("compare", "--config", "compare:smoke", "--workdir", directory) == 0
  out = capsys.readouterr().out
  assert out.count("skipped (finished") == 2 * len(c.families), out
  assert "compiled the train step" not in out
  assert _checkpoints(directory) == before


@pytest.mark.slow
def test_compare_tiny_all_families(tmp_path):
  directory = str(tmp_path / "cmp")
  assert run_cli("compare", "--config", "compare:tiny", "--workdir", directory) == 0
  _check_report(directory, compare_config.get_config("tiny").families)


def test_albert_counts_its_shared_layer_at_every_depth():
  config = family_config("albert")
  abstract = AbstractState.of(config, config.data.vocab_size)
  layer = sum(int(np.prod(x.shape)) for x in
              jax.tree.leaves(abstract.state["params"]["encoder"]["layers"]))
  m = config.model
  assert layer == 12 * m.hidden_size ** 2 + 13 * m.hidden_size      # the formula's assumption
  kw = dict(vocab=4096, hidden=m.hidden_size, layers=m.num_layers, seq_len=64, max_position=128)
  assert flops.shared_layer_encoder_flops_per_token(10 ** 6, **kw) == \
      flops.encoder_flops_per_token(10 ** 6 + (m.num_layers - 1) * layer, **kw)
