"""compare's report: DIR/report.md and its plots, from the stages' results (mean ± sample
standard deviation over the seeds; the measured strengths and weaknesses of each family, a
family called better only where Welch's t-test across the seeds gives p < ALPHA, or, run with
one seed, a paired bootstrap over the evaluation examples)."""

import dataclasses
import math
import os
import statistics
from typing import Callable

import jax
import numpy as np
from scipy import stats

from plm_jax.compare.budget import UNITS
from plm_jax.compare.stages import DOWNSTREAM, PRETRAIN, baseline, tasks_dir
from plm_jax.data.builtin_tasks import ABOUT, BASELINES, task_paths
from plm_jax.run import plots

REPORT_FILE = "report.md"
ALPHA = 0.05          # a difference is established at p < ALPHA


def mean_std(values) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for a single value) of the finite values."""
  values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
  if not values:
    return math.nan, math.nan
  return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _finite(values) -> list[float]:
  return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def welch_p(a, b) -> float:
  """The two-sided p-value of Welch's t-test that the values a and b (one per seed) have the
  same mean; nan with fewer than two of either (no spread to test against)."""
  a, b = _finite(a), _finite(b)
  if len(a) < 2 or len(b) < 2:
    return math.nan
  if statistics.variance(a) == 0 and statistics.variance(b) == 0:
    return 1.0 if statistics.fmean(a) == statistics.fmean(b) else 0.0
  return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


RESAMPLES = 1000      # the paired bootstrap's resamples of the evaluation examples
BOOTSTRAP_SEED = 0    # its fixed RNG: a report is the same every time it is written


def bootstrap_p(a, b, metric, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> float:
  """The two-sided p-value of a paired bootstrap over the evaluation examples (one seed per
  family): `a` and `b` are two families' per-example records of the same examples in the same
  order, `metric(records, indices)` the task's metric over those examples (recomputed whole on
  each resample: corpus metrics such as BLEU as well as means). The same indices, drawn with
  replacement, resample both; p is twice the share of resamples whose difference does not
  have the observed one's sign (at most 1); 1 when the observed difference is 0, nan when the
  records are not of the same examples."""
  n = _count(a)
  if n == 0 or n != _count(b):
    return math.nan
  whole = np.arange(n)
  observed = metric(a, whole) - metric(b, whole)
  if observed == 0:
    return 1.0
  rng = np.random.default_rng(seed)
  flipped = 0
  for _ in range(resamples):
    idx = rng.integers(0, n, n)
    flipped += np.sign(metric(a, idx) - metric(b, idx)) != np.sign(observed)
  return min(1.0, 2 * flipped / resamples)


def _count(records) -> int:
  """Examples in a family's per-example records ({field: [value per example]})."""
  return len(next(iter(records.values()))) if records else 0


def _cell(values, digits: int = 3) -> str:
  mean, std = mean_std(values)
  if math.isnan(mean):
    return "n/a"
  digits = 0 if abs(mean) >= 1000 else digits     # tokens/s: no decimals
  return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
  return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
          *("| " + " | ".join(r) + " |" for r in rows), ""]


def pretrain_measures(results: dict, c) -> dict:
  """{measure: {family: [value per seed]}}: the final eval loss, exp(loss) and accuracies."""
  out: dict = {}
  for family in c.families:
    for seed in c.seeds:
      ev = results["pretrain"][(family, seed)]["eval"]
      # the token-prediction loss (mlm_loss, lm_loss, ...: not BERT's NSP or ALBERT's SOP too)
      token_loss = next((v for k, v in sorted(ev.items()) if k.endswith("lm_loss")),
                        ev.get("loss"))
      row = {"eval loss": ev.get("loss"), "token loss": token_loss,
             "perplexity (exp token loss)": None if token_loss is None else math.exp(token_loss)}
      row.update({k: v for k, v in ev.items() if "accuracy" in k})
      for measure, value in row.items():
        out.setdefault(measure, {}).setdefault(family, []).append(value)
  return out


def _loss_curves(workdir: str, c, costs: dict) -> dict:
  """{family: (FLOPs, train loss)} of each family's first seed."""
  series = {}
  for family in c.families:
    run = os.path.join(workdir, family, f"seed{c.seeds[0]}", PRETRAIN)
    points = plots.read_curves(run).get("train", {}).get("loss", [])
    if points:
      steps, losses = zip(*points)
      series[family] = ([s * costs[family]["step_flops"] for s in steps], list(losses))
  return series


@dataclasses.dataclass
class Measure:
  """One column of the strengths and weaknesses: {family: [value per seed]}."""
  name: str
  values: dict
  higher_is_better: bool = True
  ranked: bool = True            # False: shown only (not comparable across the families)
  floor: float | None = None     # what learning nothing scores: no family above it, no ranking
  # one seed: {family: its per-example records of the evaluation} and the metric over a
  # resample of them, (records, indices) -> value, for the paired bootstrap
  examples: dict | None = None
  resampled: Callable | None = None

  def test(self, f: str, g: str) -> tuple[float, str]:
    """(p, the test's name) of families f and g: Welch's across the seeds, or with one seed
    each the paired bootstrap over the evaluation examples where both have them."""
    seeds = min(len(_finite(self.values[f])), len(_finite(self.values[g])))
    records = self.examples or {}
    if seeds == 1 and self.resampled is not None and f in records and g in records:
      return (bootstrap_p(records[f], records[g], self.resampled),
              f"paired bootstrap over {_count(records[f])} examples, 1 seed")
    return welch_p(self.values[f], self.values[g]), f"Welch, {seeds} seed{'s' * (seeds != 1)}"

  def learned(self) -> bool:
    sign = 1 if self.higher_is_better else -1
    return self.floor is None or any(sign * (v - self.floor) > 0 for v in self.means().values())

  def means(self) -> dict:
    return {f: m for f, v in self.values.items() if not math.isnan(m := mean_std(v)[0])}


def _budget_line(c, budget: float, costs: dict) -> str:
  if c.match == "params":
    tokens = next(iter(costs.values()))["tokens"]
    spread = max(abs(cost["params"] / budget - 1) for cost in costs.values())
    return (f"Matched parameters: {budget:,.0f} per family (each family's width sized to it, "
            f"within {100 * spread:.1f}%), every family trained on about {tokens:,} tokens")
  return f"Matched {c.match}: budget {budget:.4g} {UNITS[c.match]} per run"


def write_report(c, workdir: str, results: dict) -> str:
  """Writes DIR/report.md (and its plots in DIR/plots) from the stages' results; returns its
  path."""
  costs, fams, seeds = results["costs"], c.families, c.seeds
  throughput = {f: [results["pretrain"][(f, s)].get("tokens_per_s") for s in seeds]
                for f in fams}
  figures = _figures(c, workdir, costs, throughput)
  measures = pretrain_measures(results, c)
  lines = _header(c, results) + _compute(c, costs) + _pretraining(c, measures)
  columns: list[Measure] = []
  lines += ["## Downstream", ""]
  for kind in DOWNSTREAM:
    for task in c[kind.group].tasks:
      lines += _downstream(c, workdir, results, kind, task, columns, figures)
  lines += _throughput(c, results, throughput)
  columns.append(Measure("pretraining tokens/s", throughput))
  if "mlm_accuracy" in measures:
    columns.append(Measure("masked-token accuracy", measures["mlm_accuracy"]))
  # not ranked: a next-token, a masked-token and a permuted-order perplexity are not one scale
  columns.append(Measure("token perplexity", measures["perplexity (exp token loss)"], False,
                         ranked=False))
  lines += strengths_and_weaknesses(columns, fams)
  lines += ["## Plots", ""] + [f"![{n}](plots/{n})" for n, path in figures.items() if path] + [""]
  out = os.path.join(workdir, REPORT_FILE)
  with open(out, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  return out


def _figures(c, workdir: str, costs: dict, throughput: dict) -> dict:
  """{name: path (None: not drawn)} of the pretraining plots."""
  plot_dir, fams = os.path.join(workdir, "plots"), c.families
  return {
      "loss_vs_flops.png": plots.line_figure(
          _loss_curves(workdir, c, costs), os.path.join(plot_dir, "loss_vs_flops.png"),
          "pretraining FLOPs (as computed)", "train loss (the whole objective)",
          "Pretraining loss against FLOPs"),
      "params.png": plots.bar_figure(
          {f: costs[f]["params"] / 1e6 for f in fams}, os.path.join(plot_dir, "params.png"),
          "parameters (M)", "Parameters per family"),
      "throughput.png": plots.bar_figure(
          {f: mean_std(v)[0] / 1e3 for f, v in throughput.items()
           if not math.isnan(mean_std(v)[0])}, os.path.join(plot_dir, "throughput.png"),
          "thousand tokens/s (pretraining, measured)", "Pretraining throughput")}


def _header(c, results: dict) -> list[str]:
  return [f"# Family comparison: {c.name}", "",
          f"{_budget_line(c, results['budget'], results['costs'])}; seeds "
          f"{', '.join(map(str, c.seeds))}; corpus {results['corpus']}; each family's own "
          f"tokenizer kind trained on it with {c.pretrain.vocab_size} entries; batch "
          f"{c.pretrain.batch_size} x {c.pretrain.max_seq_length} tokens. Values are mean ± "
          "sample standard deviation over the seeds.", "", "## Compute", ""]


def _compute(c, costs: dict) -> list[str]:
  spread = max(cost["flops"] for cost in costs.values()) / min(
      cost["flops"] for cost in costs.values()) - 1
  return _table(["family", "size", "hidden", "params", "FLOPs/token (as computed)",
                 "FLOPs/token (references' convention)", "tokens/step", "steps",
                 "pretraining FLOPs (as computed)", "tokens"],
                [[f, c.sizes[f], str(costs[f]["hidden_size"]),
                  f"{costs[f]['params'] / 1e6:.2f}M", f"{costs[f]['flops_per_token']:.3g}",
                  f"{costs[f]['reference_flops_per_token']:.3g}",
                  str(costs[f]["tokens_per_step"]), str(costs[f]["steps"]),
                  f"{costs[f]['flops']:.3g}", f"{costs[f]['tokens']:,}"] for f in c.families]) \
      + ["FLOPs as computed: what each family's train step computes, forward and backward, "
         "counted by one formula for every family (plm_jax/hardware/flops.py: the output layer where "
         "it is applied, every depth of a shared layer, XLNet's two streams and memory; within "
         "5% of XLA's count of the compiled step). The families' pretraining FLOPs differ by "
         f"{100 * spread:.1f}% (whole steps). The references' convention (6 N + 12 L d T, the "
         "encoders' MLM decoder at every token, no LM head for GPT) is shown only to compare "
         "with published MFU.", ""]


def _pretraining(c, measures: dict) -> list[str]:
  names = list(measures)
  return (["## Pretraining (final eval)", ""]
          + _table(["family", *names], [[f, *(_cell(measures[m].get(f, [])) for m in names)]
                                        for f in c.families])
          + ["The eval loss is the whole objective's (BERT's with NSP, ALBERT's with SOP); the "
             "token loss only predicting tokens: masked tokens (mlm_accuracy), the next token "
             "(GPT, lm_accuracy) or XLNet's permuted targets (plm_accuracy). Perplexity is "
             "exp(token loss), comparable within one kind of objective only.", ""])


def _downstream(c, workdir: str, results: dict, kind, task: str, columns: list,
                figures: dict) -> list[str]:
  """The section of one downstream task; adds its measures to `columns`, its plot to
  `figures`."""
  costs, seeds = results["costs"], c.seeds
  able = [f for f in c.families if (f, seeds[0], task) in results["downstream"]]
  if not able:
    return [f"### {task} ({kind.title})", "",
            f"Not run: no family compared can ({kind.cannot}).", ""]
  runs = {f: [results["downstream"][(f, s, task)] for s in seeds] for f in able}
  first = runs[able[0]][0]
  metric, split = first["metric"], first["split"]
  shown = [metric, *(m for m in kind.shown if m != metric and m in first["numbers"])]
  rows = [[f, *(_cell([r["numbers"].get(m) for r in runs[f]]) for m in shown),
           _per_point(costs[f]["flops"], runs[f], kind)] for f in able]
  lines = [f"### {task} ({kind.title}): {metric}, {split} split", ""]
  about, floor = _task_origin(c, workdir, kind, task, first, shown, rows)
  lines += about + _table(["family", *shown, "pretraining FLOPs per point"], rows)
  left_out = [f for f in c.families if f not in able]
  if left_out and kind.cannot:
    lines += [f"Not run: {', '.join(left_out)} ({kind.cannot}).", ""]
  # one seed: the paired bootstrap over the examples every family was evaluated on
  examples = {f: runs[f][0]["examples"] for f in able
              if len(seeds) == 1 and "examples" in runs[f][0]}
  resampled = None if kind.resampled is None else \
      (lambda records, indices: kind.resampled(records, indices, metric))
  columns.append(Measure(f"{task} {metric}", {f: [r["score"] for r in runs[f]] for f in able},
                         floor=floor, examples=examples or None, resampled=resampled))
  if kind.perplexity and "perplexity" in first["numbers"]:
    columns.append(Measure(f"{task} target perplexity", {
        f: [r["numbers"].get("perplexity") for r in runs[f]] for f in able}, False))
  name = f"downstream_{task}.png"
  figures[name] = plots.scatter_figure(
      {f: (costs[f]["flops"], *mean_std([r["score"] for r in runs[f]])) for f in able},
      os.path.join(workdir, "plots", name), "pretraining FLOPs", f"{task} {metric}",
      f"{task}: {metric} against pretraining FLOPs")
  return lines


def _task_origin(c, workdir: str, kind, task: str, first: dict, shown: list, rows: list):
  """(lines saying where the task comes from, the baseline's score or None); a built-in task's
  baseline row is added to `rows`."""
  split = first["split"]
  if task in ABOUT:
    # what a model that learned nothing scores: a family's score means something above it
    # (generation decodes the first report_examples prompts: the baseline on the same)
    scores = baseline(task, task_paths(tasks_dir(c, workdir))[task][split],
                      limit=int(first["numbers"].get("decoded", 0)))
    rows.append(["*baseline*", *(f"*{scores[m]:.3f}*" if m in scores else "" for m in shown),
                 ""])
    return [f"Built-in: {ABOUT[task]}. Baseline: {BASELINES[task]}.", ""], \
        scores.get(first["metric"])
  own = c[kind.group].own
  if task != own.name:
    return [], None
  return ["Your task, from " + ", ".join(f"{s} {own[f'{s}_path']}" for s in
                                         ("train", "eval", "test") if own[f"{s}_path"])
          + "".join(f"; {f} `{own[f]}`" for f in kind.own_fields if own[f]) + ".", ""], None


def _per_point(flops: float, runs: list, kind) -> str:
  """Pretraining FLOPs per point of the score (a point: one of 100, whether the kind reports
  fractions or percentages)."""
  mean, _ = mean_std([r["score"] for r in runs])
  return f"{flops / (kind.scale * mean) if mean > 0 else math.nan:.3g}"


def _throughput(c, results: dict, throughput: dict) -> list[str]:
  keys = [k for k in ("tokens_per_s", "step_ms", "mfu_computed", "mfu", "peak_mem_gib",
                      "temp_gib", "argument_gib")
          if any(k in b for b in results["bench"].values())]
  lines = ["## Throughput and memory", ""]
  lines += _table(["family", "pretraining tokens/s (measured in the runs)",
                   *(f"bench {k}" for k in keys)],
                  [[f, _cell(throughput[f], 0), *(str(results["bench"].get(f, {}).get(k, "n/a"))
                                                   for k in keys)] for f in c.families])
  return lines + [
      f"Measured on {c.devices or jax.device_count()} x {jax.devices()[0].device_kind} "
      "(this run's devices; a run resumed elsewhere mixes machines)"
      + ("; `bench` compiles each family's pretraining step on its own (memory per device)"
         if keys else "; `bench` off (compare's `bench` field: compile or time)") + ".", ""]

def _p_text(p: float) -> str:
  return "n/a" if math.isnan(p) else f"{p:.3f}" if p >= 0.001 else "< 0.001"


def _extreme(m: Measure, means: dict, top: bool) -> tuple[str, float, str]:
  """The family with the best (top) or worst mean of a measure, the largest p-value of it
  against any other family (it is established best / worst when that is < ALPHA) and the
  test that gave it (Measure.test)."""
  sign = (1 if m.higher_is_better else -1) * (1 if top else -1)
  family = max(means, key=lambda f: sign * means[f])
  tests = [m.test(family, f) for f in means if f != family]
  return family, *max(tests, key=lambda t: math.inf if math.isnan(t[0]) else t[0])


def _measure_heading(m: Measure) -> str:
  return (m.name + ("" if not m.ranked or m.higher_is_better else " (lower is better)")
          + ("" if m.ranked else " (not ranked)")
          + ("" if m.learned() else " (none above the baseline)"))


def _verdict_line(family: str, best: list, worst: list, unsure: list) -> str:
  return (f"- **{family}**: best at {', '.join(best) or 'no measure'}; worst at "
          f"{', '.join(worst) or 'no measure'}"
          + (f"; leads or trails at {', '.join(unsure)}, a difference not "
             "established with these seeds" if unsure else "") + ".")


def strengths_and_weaknesses(columns: list[Measure], fams: list[str]) -> list[str]:
  """A table of every measure (mean ± spread; the best in bold where it is established), the
  p-values of the best and worst family against the others, and, per family, the measures it
  is established best and worst at among the families that have them, and those where it
  leads or trails without the difference being established."""
  # a measure ranks the families that have it when they differ; one only a single family has
  # (generation: GPT) is shown, not ranked
  columns = [m for m in columns if m.means()]
  best, worst = {f: [] for f in fams}, {f: [] for f in fams}
  unsure = {f: [] for f in fams}
  marked, tests = [], []
  for m in columns:
    means = m.means()
    if len(set(means.values())) < 2 or not m.ranked or not m.learned():
      marked.append(set())
      continue
    (top, p_top, test), (bottom, p_bottom, _) = (_extreme(m, means, True),
                                                 _extreme(m, means, False))
    tests.append([m.name, top, _p_text(p_top), bottom, _p_text(p_bottom), test])
    marked.append({top} if p_top < ALPHA else set())
    for family, p, established in ((top, p_top, best), (bottom, p_bottom, worst)):
      (established if p < ALPHA else unsure)[family].append(m.name)
  lines = ["## Measured strengths and weaknesses", ""]
  if not columns:
    return lines + ["No measure to show.", ""]
  rows = [[f, *(("**" + _cell(m.values[f]) + "**" if f in top else _cell(m.values[f]))
                if f in m.values else "—" for m, top in zip(columns, marked))] for f in fams]
  lines += _table(["family", *map(_measure_heading, columns)], rows)
  if tests:
    lines += _table(["measure", "best mean", "p (best vs each other, the largest)",
                     "worst mean", "p (worst vs each other, the largest)", "test"], tests)
  lines += [_verdict_line(f, best[f], worst[f], unsure[f]) for f in fams]
  lines += ["", f"A family is called best (in bold) or worst at a measure only where the test "
            f"gives p < {ALPHA} against every other family that has it (the largest of those "
            "p-values is shown): Welch's t-test across the seeds, or, with one seed, a paired "
            f"bootstrap over the evaluation examples ({RESAMPLES} resamples of the examples, "
            "the same for every family, with a fixed RNG; p is twice the share of resamples "
            "where the difference changes sign; a downstream task's measures only, the "
            "others are not established with one seed); otherwise the difference is not "
            "established with the seeds run. A measure of one family is "
            "shown, not ranked; the token perplexity is not ranked either: next-token, "
            "masked-token and permuted-order predictions are different tasks.", ""]
  return lines
