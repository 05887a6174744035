"""`plm-jax compare`: the matched budget, the aggregation over seeds, and the command end to end
(the CI smoke version: two families, one seed, a few steps; the whole tiny run is slow)."""

import math
import os
import re

import jax
import numpy as np
import pytest

from helpers import family_config
from plm_jax import cli, compare
from plm_jax.hardware import flops
from plm_jax.compare import baseline
from plm_jax.configs import compare as compare_config
from plm_jax.sizing.param_match import count_params, with_width
from plm_jax.sizing.plan import make_plan
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


def test_parameter_counts_matched_on_the_same_tokens():
  c = compare_config.get_config("smoke")
  c.families = ("bert", "albert", "gpt", "xlnet")
  c.match = "params"
  c.reference_steps = 4            # even: XLNet's half as many steps are whole
  budget, costs = compare.plan_budget(c)
  target = count_params(compare.pretrain_config(c, "bert", 0))
  assert budget == target
  tokens = c.pretrain.batch_size * c.pretrain.max_seq_length * c.reference_steps
  for f in c.families:
    config = compare.family_config(c, costs, f, 0)
    assert count_params(config) == costs[f]["params"], f
    heads = config.model.num_heads
    # no width one step either side comes closer (each counted on its own)
    for other in (costs[f]["hidden"] - heads, costs[f]["hidden"] + heads):
      assert abs(costs[f]["params"] - target) <= abs(
          count_params(with_width(config, other)) - target), (f, other)
    assert costs[f]["tokens"] == tokens, f          # XLNet: two segments a row, half the steps
  assert costs["albert"]["hidden"] > 128 >= costs["bert"]["hidden"]   # shared layers: wider


def test_bad_compare_configs_are_one_line(tmp_path, capsys):
  for flag in ("--config.match=flop", "--config.bench=sometimes", "--config.families=bert,t5",
               "--config.families=bert,gpt,bert",
               "--config.qa.tasks=word_order", "--config.qa.tasks=sst2",
               "--config.classify.tasks=cloze"):
    assert run_cli("compare", "--config", "compare:smoke", "--workdir", str(tmp_path / "w"),
                   flag) == 2, flag
    err = capsys.readouterr().err.strip()
    assert err.startswith("plm-jax compare: error:") and "\n" not in err, err
  assert not os.path.exists(tmp_path / "w")


def test_strengths_rank_by_mean_and_share_ties():
  columns = [compare.Measure("acc", {"a": [0.5, 0.7], "b": [0.9, 0.9], "c": [0.1, 0.1]}),
             compare.Measure("ppl", {"a": [10.0], "b": [30.0], "c": [10.0]}, False),
             compare.Measure("same", {"a": [1.0], "b": [1.0]}),
             compare.Measure("qa f1", {"a": [40.0], "b": [20.0]}),
             compare.Measure("cloze", {"a": [9.0], "b": [11.0]}, floor=11.0)]
  lines = compare.strengths_and_weaknesses(columns, ["a", "b", "c"])
  text = "\n".join(lines)
  assert "same" in lines[2] and "same" not in text.split("| c |")[1]   # shown, not ranked
  assert "| b | **0.900 ± 0.000** | 30.000 ± 0.000 | 1.000 ± 0.000 | 20.000 ± 0.000 | " \
      "11.000 ± 0.000 |" in lines                     # none above its baseline: not ranked
  assert "cloze (none above the baseline)" in lines[2]
  assert "| c | 0.100 ± 0.000 | **10.000 ± 0.000** | — | — | — |" in lines
  assert "- **a**: best at ppl, qa f1; worst at no measure." in lines
  assert "- **b**: best at acc; worst at ppl, qa f1." in lines
  assert "- **c**: best at ppl; worst at acc." in lines


def test_downstream_result_prefers_the_labelled_test_split():
  report = {"validation": {"accuracy": 0.6, "loss": 0.7},
            "test": {"accuracy": 0.65, "loss": 0.69, "examples": 10}}
  result = compare.downstream_result(report, "accuracy")
  assert (result["split"], result["score"]) == ("test", 0.65)
  assert result["numbers"]["perplexity"] == pytest.approx(math.exp(0.69))
  unlabelled = {"validation": {"f1": 30.0}, "test": {"examples": 5}}
  assert compare.downstream_result(unlabelled, "f1")["split"] == "validation"


def _checkpoints(directory):
  return sorted(os.path.join(root, d) for root, dirs, _ in os.walk(directory) for d in dirs
                if os.path.basename(root) in ("checkpoints", "best"))


def _check_report(directory, c):
  report = open(os.path.join(directory, "report.md"), encoding="utf-8").read()
  for family in c.families:
    rows = [line for line in report.splitlines() if line.startswith(f"| {family} |")]
    assert len(rows) >= 5, (family, report)  # compute, pretraining, 2 tasks, speed, strengths
    numbers = [float(x) for row in rows for x in re.findall(r"-?\d+\.\d+(?:e[+-]\d+)?", row)]
    assert numbers and all(math.isfinite(x) for x in numbers), rows
  tasks = [*c.classify.tasks, *c.qa.tasks, *c.generate.tasks]
  for name in ("loss_vs_flops.png", "params.png", "throughput.png",
               *(f"downstream_{t}.png" for t in tasks)):
    assert os.path.getsize(os.path.join(directory, "plots", name)) > 1000, name
    assert f"plots/{name}" in report
  for heading in ("### word_order (classification): accuracy, test split",
                  "### cloze (question answering): f1, test split",
                  "### unshuffle (generation): bleu, test split",
                  "## Measured strengths and weaknesses"):
    assert heading in report, heading
  assert "Not run: gpt (extractive QA needs a bidirectional encoder)." in report
  assert "corpus `builtin` less the built-in tasks' validation and test docstrings" in report
  return report


@pytest.mark.e2e
def test_compare_smoke_reports_and_resumes(tmp_path, capsys):
  directory = str(tmp_path / "cmp")
  assert run_cli("compare", "--config", "compare:smoke", "--workdir", directory) == 0
  c = compare_config.get_config("smoke")
  _check_report(directory, c)
  before = _checkpoints(directory)
  capsys.readouterr()
  assert run_cli("compare", "--config", "compare:smoke", "--workdir", directory) == 0
  out = capsys.readouterr().out
  # bert: pretrain, word_order, cloze; gpt: pretrain, word_order, unshuffle
  assert out.count("skipped (finished") == 6, out
  assert "compiled the train step" not in out and "writing the built-in tasks" not in out
  assert _checkpoints(directory) == before
  # a finished stage of another setup is not reported as this config's
  assert run_cli("compare", "--config", "compare:smoke", "--workdir", directory,
                 "--config.generate.learning_rate=0.5") == 2
  err = capsys.readouterr().err.strip()
  assert "unshuffle finished with another setup (learning_rate differ)" in err, err
  assert "\n" not in err and _checkpoints(directory) == before


@pytest.mark.slow
def test_compare_tiny_all_families(tmp_path):
  directory = str(tmp_path / "cmp")
  assert run_cli("compare", "--config", "compare:tiny", "--workdir", directory) == 0
  c = compare_config.get_config("tiny")
  _check_report(directory, c)
  # a family learns word order far above what a model that learned nothing scores
  accuracy = {f: np.mean([compare.read_result(os.path.join(directory, f, f"seed{s}",
                                                            "word_order"))["score"]
                          for s in c.seeds]) for f in c.families}
  floor = baseline("word_order", os.path.join(directory, "tasks", "word_order", "test.jsonl"))
  assert max(accuracy.values()) >= floor["accuracy"] + 0.1, (accuracy, floor)


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
