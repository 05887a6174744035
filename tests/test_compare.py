"""`plm-jax compare`: the matched budget, the aggregation over seeds, and the command end to end
(the CI smoke version: two families, one seed, a few steps; the whole tiny run is slow)."""

import json
import math
import os
import re

import jax
import numpy as np
import pytest
from scipy import stats

from helpers import family_config
from plm_jax import cli, compare
from plm_jax.hardware import flops
from plm_jax.compare import baseline, stages
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


def _user_files(tmp_path):
  """A corpus and one task of each kind in the user's formats and field names."""
  (tmp_path / "corpus").mkdir()
  (tmp_path / "corpus" / "a.txt").write_text("One document here.\n\nAnother one there.\n")
  (tmp_path / "train.csv").write_text("review,stars\ngood film,5\nbad film,1\n")
  (tmp_path / "test.csv").write_text("review\nfine film\n")
  (tmp_path / "gen.jsonl").write_text(json.dumps({"prompt": "a b", "completion": "b a"}) + "\n")
  squad = {"data": [{"paragraphs": [{"context": "the cat sat", "qas": [
      {"id": "1", "question": "who sat?", "answers": [{"text": "cat", "answer_start": 4}]}]}]}]}
  (tmp_path / "qa.json").write_text(json.dumps(squad))
  return tmp_path


def test_the_users_corpus_and_tasks_reach_the_runs(tmp_path):
  u = _user_files(tmp_path)
  c = compare_config.get_config("smoke")
  c.corpus, c.corpus_path = "text", str(u / "corpus" / "*.txt")
  c.classify.own.update(name="reviews", train_path=str(u / "train.csv"),
                        test_path=str(u / "test.csv"), text_field="review", label_field="stars")
  c.qa.own.update(name="mine_qa", train_path=str(u / "qa.json"))
  c.generate.own.update(name="swap", train_path=str(u / "gen.jsonl"), source_field="prompt",
                        target_field="completion")
  stages.normalise(c)
  stages.validate(c)
  assert c.classify.tasks == ("word_order", "reviews") and c.qa.tasks[-1] == "mine_qa"
  pre = compare.pretrain_config(c, "bert", 0)
  assert (pre.data.source, pre.data.path) == ("text", str(u / "corpus" / "*.txt"))
  assert "`text` files" in stages.corpus_name(c, "") and "(1 file)" in stages.corpus_name(c, "")
  kinds = {k.group: k for k in stages.DOWNSTREAM}
  cls = stages.downstream_config(c, kinds["classify"], "reviews", 1, {})
  assert (cls.finetune.task, cls.finetune.train_path, cls.finetune.test_path) == (
      "csv", str(u / "train.csv"), str(u / "test.csv"))
  assert (cls.classify.text_field, cls.classify.label_field, cls.train.seed) == (
      "review", "stars", 1)
  qa = stages.downstream_config(c, kinds["qa"], "mine_qa", 0, {})
  assert (qa.finetune.task, qa.finetune.train_path) == ("json", str(u / "qa.json"))
  gen = stages.downstream_config(c, kinds["generate"], "swap", 0, {})
  assert (gen.finetune.task, gen.seq2seq.source_field, gen.seq2seq.target_field) == (
      "jsonl", "prompt", "completion")


def test_bad_user_data_is_one_line_before_anything_runs(tmp_path, capsys):
  u = _user_files(tmp_path)
  bad = [("--config.corpus=text", f"--config.corpus_path={u}/none/*.txt"),
         ("--config.corpus=jsonl", f"--config.corpus_path={u}/gen.jsonl"),    # no "text" field
         ("--config.corpus=tfds",),
         ("--config.classify.own.name=r", f"--config.classify.own.train_path={u}/train.csv"),
         ("--config.classify.own.name=r", f"--config.classify.own.train_path={u}/nope.csv"),
         ("--config.classify.own.name=r",),
         ("--config.qa.own.name=q", f"--config.qa.own.train_path={u}/gen.jsonl"),
         ("--config.qa.own.name=q", f"--config.qa.own.train_path={u}/train.csv"),
         ("--config.generate.own.name=g", f"--config.generate.own.train_path={u}/gen.jsonl")]
  for flags in bad:
    assert run_cli("compare", "--config", "compare:smoke", "--workdir", str(u / "w"),
                   *flags) == 2, flags
    err = capsys.readouterr().err.strip()
    assert err.startswith("plm-jax compare: error:") and "\n" not in err, err
  assert not os.path.exists(u / "w")


def test_welch_p_values_are_the_textbook_values():
  # Welch's t-test by hand: t = (m1 - m2) / sqrt(s1^2/n1 + s2^2/n2), Welch-Satterthwaite df
  a, b = [0.70, 0.72, 0.68, 0.71], [0.60, 0.66, 0.58, 0.65]
  va, vb = np.var(a, ddof=1) / 4, np.var(b, ddof=1) / 4
  t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
  df = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 3)
  assert compare.welch_p(a, b) == pytest.approx(2 * stats.t.sf(abs(t), df))
  assert math.isnan(compare.welch_p([0.5], [0.7, 0.8]))          # one seed: nothing to test
  assert compare.welch_p([1.0, 1.0], [2.0, 2.0]) == 0.0 and compare.welch_p([1, 1], [1, 1]) == 1


def test_a_family_is_better_only_where_the_difference_is_significant():
  columns = [compare.Measure("acc", {"a": [0.50, 0.52, 0.51], "b": [0.90, 0.91, 0.89],
                                     "c": [0.10, 0.12, 0.11]}),
             # RoBERTa's 0.584 ± 0.145 against BERT's 0.510 ± 0.028: not established
             compare.Measure("noisy", {"a": [0.481, 0.538], "b": [0.481, 0.687]}),
             compare.Measure("ppl", {"a": [10.0, 10.5, 9.5], "b": [30.0, 31.0, 29.0],
                                     "c": [20.0, 21.0, 19.0]}, False),
             compare.Measure("same", {"a": [1.0, 1.0], "b": [1.0, 1.0]}),
             compare.Measure("one seed", {"a": [40.0], "b": [20.0]}),
             compare.Measure("cloze", {"a": [9.0, 9.0], "b": [11.0, 11.0]}, floor=11.0)]
  lines = compare.strengths_and_weaknesses(columns, ["a", "b", "c"])
  assert "| b | **0.900 ± 0.010** | 0.584 ± 0.146 | 30.000 ± 1.000 | 1.000 ± 0.000 | " \
      "20.000 ± 0.000 | 11.000 ± 0.000 |" in lines                 # noisy, one seed: no bold
  assert "| a | 0.510 ± 0.010 | 0.510 ± 0.040 | **10.000 ± 0.500** | 1.000 ± 0.000 | " \
      "40.000 ± 0.000 | 9.000 ± 0.000 |" in lines
  assert "- **a**: best at ppl; worst at no measure; leads or trails at noisy, one seed, a " \
      "difference not established with these seeds." in lines
  assert "- **b**: best at acc; worst at ppl; leads or trails at noisy, one seed, a " \
      "difference not established with these seeds." in lines
  assert "- **c**: best at no measure; worst at acc." in lines
  rows = {line.split(" | ")[0][2:]: line for line in lines if line.startswith("| ")}
  p_noisy = compare.welch_p([0.481, 0.687], [0.481, 0.538])
  assert p_noisy > 0.05
  assert rows["noisy"] == f"| noisy | b | {p_noisy:.3f} | a | {p_noisy:.3f} | Welch, 2 seeds |"
  assert rows["one seed"] == "| one seed | a | n/a | b | n/a | Welch, 1 seed |"
  assert "cloze" not in rows and "same" not in rows        # under the baseline; all equal


def _mean_of(records, indices):
  return float(np.mean(np.asarray(records["correct"])[indices]))


def test_paired_bootstrap_p_values_match_the_binomial_reference():
  """Per-example correctness where b equals a but for k of n examples that only a gets right:
  a resample's difference flips sign (to 0) exactly when it draws none of the k, probability
  (1 - k/n)^n, so the two-sided p is 2 (1 - k/n)^n."""
  n, k = 20, 3
  a = {"correct": [1.0] * 10 + [0.0] * 10}
  b = {"correct": [0.0] * k + [1.0] * (10 - k) + [0.0] * 10}
  reference = 2 * (1 - k / n) ** n
  p = compare.bootstrap_p(a, b, _mean_of, resamples=20_000)
  assert p == pytest.approx(reference, abs=0.01)            # binomial sd ~0.0024
  assert compare.bootstrap_p(a, b, _mean_of) == pytest.approx(reference, abs=0.03)  # 1000
  assert compare.bootstrap_p(a, a, _mean_of) == 1.0         # identical scores: no difference
  many = {"correct": [1.0] * 60 + [0.0] * 40}
  few = {"correct": [1.0] * 30 + [0.0] * 70}
  assert compare.bootstrap_p(many, few, _mean_of) < 0.05    # 0.6 vs 0.3 on 100 examples
  assert math.isnan(compare.bootstrap_p(many, a, _mean_of))  # not the same examples


def test_a_one_seed_report_tests_with_the_paired_bootstrap():
  clear = {"a": {"correct": [1.0] * 60 + [0.0] * 40}, "b": {"correct": [1.0] * 30 + [0.0] * 70}}
  close = {"a": {"correct": [1.0] * 31 + [0.0] * 69}, "b": {"correct": [1.0] * 30 + [0.0] * 70}}
  columns = [compare.Measure("clear", {"a": [0.6], "b": [0.3]}, examples=clear,
                             resampled=_mean_of),
             compare.Measure("close", {"a": [0.31], "b": [0.30]}, examples=close,
                             resampled=_mean_of)]
  lines = compare.strengths_and_weaknesses(columns, ["a", "b"])
  rows = {line.split(" | ")[0][2:]: line for line in lines if line.startswith("| ")}
  p_clear = compare.bootstrap_p(clear["a"], clear["b"], _mean_of)
  p_close = compare.bootstrap_p(close["a"], close["b"], _mean_of)
  assert p_clear < 0.05 < p_close
  test = "paired bootstrap over 100 examples, 1 seed"
  assert rows["clear"] == f"| clear | a | {p_clear:.3f} | b | {p_clear:.3f} | {test} |" \
      or p_clear < 0.001 and rows["clear"] == f"| clear | a | < 0.001 | b | < 0.001 | {test} |"
  assert rows["close"] == f"| close | a | {p_close:.3f} | b | {p_close:.3f} | {test} |"
  assert "| a | **0.600 ± 0.000** | 0.310 ± 0.000 |" in lines    # established with one seed
  assert "- **a**: best at clear; worst at no measure; leads or trails at close, a difference " \
      "not established with these seeds." in lines


def test_base_runs_enough_seeds_to_establish_a_two_sigma_difference():
  """Welch's test at p < 0.05 between two families whose means differ by twice the spread
  over seeds: the power of compare:base's seeds (noncentral t, Welch's df at equal spread)."""
  n = len(compare_config.get_config("base").seeds)
  df, shift = 2 * n - 2, 2.0 / math.sqrt(2 / n)
  critical = stats.t.ppf(0.975, df)
  power = stats.nct.sf(critical, df, shift) + stats.nct.cdf(-critical, df, shift)
  assert power >= 0.8, (n, power)


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


def test_the_kinds_recompute_their_metric_on_a_resample():
  """Classification's records give its report's metrics back (accuracy by hand here); a
  resample's BLEU is the corpus BLEU of the resampled sentences."""
  from plm_jax.finetune.kinds import KINDS
  from plm_jax.finetune.seq2seq.metrics import generation_metrics
  stages_of = {k.group: k for k in stages.DOWNSTREAM}
  logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 2.0]])
  records = {"labels": [0, 1, 1, 1], "logits": logits.tolist()}
  classify = stages_of["classify"]
  assert classify.resampled(records, np.arange(4), "accuracy") == 0.75
  assert classify.resampled(records, np.array([2, 2, 0]), "accuracy") == pytest.approx(1 / 3)
  generate = stages_of["generate"]
  text = {"predictions": ["a b c d", "e f g", "x y z w"], "references": ["a b c d", "e f h", "x y z w"]}
  picked = [0, 0, 1]
  assert generate.resampled(text, np.array(picked), "bleu") == pytest.approx(generation_metrics(
      [text["predictions"][i] for i in picked], [text["references"][i] for i in picked])["bleu"])
  assert {k.name for k in KINDS.values()} >= {"classify", "qa", "seq2seq"}
