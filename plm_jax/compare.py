"""`plm-jax compare`: the families pretrained at matched compute, fine-tuned on the same tasks
with the same seeds, and one report (DIR/report.md and its PNGs) of what was measured.

Layout of DIR (each stage its own workdir, so a rerun continues what is unfinished):
  <family>/seed<k>/pretrain/        a `plm-jax train` workdir
  <family>/seed<k>/<task>/          a `plm-jax finetune` workdir initialised from pretrain/
  <family>/bench/                   `bench` of the family's pretraining config (config.bench)
  report.md, plots/*.png            rewritten from the stages' results at every run
A stage that finished holds RESULT_FILE (written last); a rerun skips it and reads it back.

The budget: match="flops" gives every family the same model FLOPs (flops.py's convention, the
one `plan` and `bench` use: families.Family.flops_per_token x tokens per step), match="tokens"
the same tokens; train.steps = round(budget / per-step cost), at least 1.
"""

import importlib.util
import json
import math
import os
import statistics

import jax

from plm_jax import configs as presets, families, plots
from plm_jax.bench import bench
from plm_jax.data import loader
from plm_jax.errors import ConfigError
from plm_jax.finetune.run import finetune
from plm_jax.metrics_writer import console
from plm_jax.models.config import padded_vocab
from plm_jax.param_match import count_params
from plm_jax.plan import plan
from plm_jax.pretrain import train
from plm_jax.tasks import task_of

RESULT_FILE = "compare_result.json"
REPORT_FILE = "report.md"
PRETRAIN = "pretrain"
MATCHES = ("flops", "tokens")
BENCH_MODES = ("off", "compile", "time")


# --- configs ----------------------------------------------------------------------------------

def load_config_file(spec: str):
  """The ConfigDict of `FILE:ARG` or a preset's `NAME:ARG` (what --config takes)."""
  path, _, arg = presets.resolve(spec).partition(":")
  if not os.path.exists(path):
    raise ConfigError(f"config {spec!r}: no such preset or file")
  module_spec = importlib.util.spec_from_file_location(f"_compare_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def validate(c) -> None:
  unknown = [f for f in c.families if f not in families.FAMILIES]
  if unknown or not c.families:
    raise ConfigError(f"compare families {unknown or '[]'}: give one or more of "
                      f"{', '.join(families.FAMILIES)}")
  if c.devices < 0 or c.devices > jax.device_count():
    raise ConfigError(f"compare devices={c.devices} must be in [0, {jax.device_count()}] (0 = "
                      "all of this host's)")
  if c.match not in MATCHES:
    raise ConfigError(f"compare match={c.match!r} is not one of {', '.join(MATCHES)} (matching "
                      "parameter counts is not supported yet: choose sizes of similar counts)")
  if c.bench not in BENCH_MODES:
    raise ConfigError(f"compare bench={c.bench!r} is not one of {', '.join(BENCH_MODES)}")
  if not c.seeds:
    raise ConfigError("compare seeds=[] runs nothing; give one or more seeds")
  if c.budget <= 0 and (c.reference_family not in families.FAMILIES or c.reference_steps <= 0):
    raise ConfigError("give compare budget > 0, or reference_family (a family) and "
                      "reference_steps > 0")
  missing = [f for f in {*c.families, c.reference_family} if f not in c.sizes]
  if missing:
    raise ConfigError(f"compare sizes has no entry for {', '.join(sorted(missing))}")


def pretrain_config(c, family: str, seed: int, steps: int = 1):
  """The family's preset with the comparison's shared corpus, vocabulary, batch and length."""
  config = load_config_file(f"{family}:{c.sizes[family]},mesh={c.mesh}")
  p = c.pretrain
  with config.unlocked():
    config.data.source = c.corpus
    config.data.vocab_size = p.vocab_size
    config.data.max_seq_length = p.max_seq_length
    config.data.dupe_factor = 1
    config.model.max_position = max(config.model.max_position, p.max_seq_length)
    config.train.batch_size = p.batch_size
    config.train.eval_steps = p.eval_steps
    config.train.log_every = p.log_every
    config.train.seed = seed
    config.train.steps = steps
    config.optim.warmup_steps = min(config.optim.warmup_steps, max(1, steps // 10))
    # a shorter sequence than the preset's leaves less room for XLNet's reused memory
    config.objective.reuse_len = min(config.objective.reuse_len, p.max_seq_length // 2)
    if p.learning_rate > 0:
      config.optim.learning_rate = p.learning_rate
  return config


def finetune_config(c, task: str, seed: int):
  config = load_config_file(f"classify:{task},mesh={c.mesh}")
  f = c.finetune
  with config.unlocked():
    config.train.seed = seed
    config.train.batch_size = f.batch_size
    config.data.max_seq_length = f.max_seq_length
    config.optim.learning_rate = f.learning_rate
    config.train.eval_every = f.eval_every
    if f.steps > 0:
      config.classify.epochs = 0.0
      config.train.steps = f.steps
      config.train.log_every = max(1, f.steps // 5)
    else:
      config.classify.epochs = f.epochs
  return config


# --- the budget -------------------------------------------------------------------------------

def step_cost(config) -> dict:
  """Parameters, model FLOPs per token and per step, and tokens per step of a pretraining
  config (as `plan` counts them: the configured vocabulary, padded)."""
  vocab = padded_vocab(config, config.data.vocab_size)
  n_params = count_params(config)
  m = config.model
  per_token = families.get(m.family).flops_per_token(
      n_params, vocab=vocab, hidden=m.hidden_size, layers=m.num_layers,
      seq_len=config.data.max_seq_length, max_position=m.max_position)
  tokens = config.train.batch_size * config.data.max_seq_length * loader.segments_per_row(config)
  return {"params": n_params, "flops_per_token": float(per_token), "tokens_per_step": tokens,
          "step_flops": float(per_token) * tokens}


def steps_for(budget: float, per_step: float) -> int:
  return max(1, int(round(budget / per_step)))


def plan_budget(c) -> tuple[float, dict]:
  """(budget, {family: cost with "steps"}): every family's steps for the matched budget."""
  unit = "step_flops" if c.match == "flops" else "tokens_per_step"
  costs = {f: step_cost(pretrain_config(c, f, 0)) for f in c.families}
  budget = c.budget
  if budget <= 0:
    reference = costs.get(c.reference_family) or step_cost(
        pretrain_config(c, c.reference_family, 0))
    budget = reference[unit] * c.reference_steps
  for cost in costs.values():
    cost["steps"] = steps_for(budget, cost[unit])
    cost["flops"] = cost["steps"] * cost["step_flops"]
    cost["tokens"] = cost["steps"] * cost["tokens_per_step"]
  return budget, costs


# --- stages -----------------------------------------------------------------------------------

def read_result(workdir: str) -> dict | None:
  path = os.path.join(workdir, RESULT_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def write_result(workdir: str, result: dict) -> None:
  # written whole then renamed: a stage killed while writing it is not taken for finished
  path = os.path.join(workdir, RESULT_FILE)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1, default=float)
  os.replace(path + ".tmp", path)


def stage(workdir: str, name: str, run) -> dict:
  """The stage's result: read back when it finished before, else `run()`'s, saved."""
  done = read_result(workdir)
  if done is not None:
    console(f"compare: {name}: skipped (finished: {os.path.join(workdir, RESULT_FILE)})")
    return done
  console(f"compare: {name}: running in {workdir}")
  result = run()
  write_result(workdir, result)
  return result


def _numbers(d: dict) -> dict:
  return {k: float(v) for k, v in d.items()
          if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _finetune_result(report: dict, metric: str) -> dict:
  split = "test" if isinstance(report.get("test"), dict) and metric in report["test"] \
      else "validation"
  return {"metric": metric, "split": split, "score": float(report[split][metric]),
          "validation": _numbers(report.get("validation", {}))}


def estimate(c, costs: dict) -> float | None:
  """Prints `plan`'s memory and step time of every family's pretraining on c.topology, and
  the pretraining time of the whole comparison; returns it in seconds (None if unknown)."""
  total = 0.0
  for family, cost in costs.items():
    p = plan(pretrain_config(c, family, c.seeds[0], cost["steps"]), c.topology)
    if p["step_time_s"] is None:
      total = None
      continue
    hours = p["step_time_s"] * cost["steps"] * len(c.seeds) / 3600
    console(f"compare: {family}: {cost['steps']} steps x {len(c.seeds)} seeds at "
            f"{p['step_time_s']:.3g} s/step on {c.topology}: {hours:.2f} h of pretraining")
    if total is not None:
      total += hours * 3600
  if total is not None:
    console(f"compare: plan's estimate of the pretraining on {c.topology} (MFU 0.4): "
            f"{total / 3600:.2f} h, fine-tuning not counted")
  return total


def run_all(c, workdir: str) -> dict | None:
  """Runs (or skips) every stage; returns what the report is made of (None with
  c.plan_only: the estimate only)."""
  devices = jax.devices()[:c.devices] if c.devices > 0 else None
  budget, costs = plan_budget(c)
  console(f"compare: match {c.match}, budget {budget:.4g} "
          f"{'FLOPs' if c.match == 'flops' else 'tokens'}; "
          + "; ".join(f"{f} {cost['params'] / 1e6:.2f}M params, {cost['steps']} steps"
                      for f, cost in costs.items()))
  if c.topology:
    estimate(c, costs)
  results = {"budget": budget, "costs": costs, "pretrain": {}, "finetune": {}, "bench": {}}
  if c.plan_only:
    return None
  for family in c.families:
    steps = costs[family]["steps"]
    if c.bench != "off":
      bench_dir = os.path.join(workdir, family, "bench")
      os.makedirs(bench_dir, exist_ok=True)
      results["bench"][family] = stage(bench_dir, f"{family} bench", lambda: _numbers(bench(
          pretrain_config(c, family, c.seeds[0], steps), compile_only=c.bench == "compile")))
    for seed in c.seeds:
      base = os.path.join(workdir, family, f"seed{seed}")
      pre_dir = os.path.join(base, PRETRAIN)
      os.makedirs(pre_dir, exist_ok=True)
      config = pretrain_config(c, family, seed, steps)
      done = read_result(pre_dir)
      if done is not None and done["steps"] != steps:
        # another budget (or FLOPs formula) than the finished run's: not a run to continue
        raise ConfigError(f"{pre_dir} finished {done['steps']} steps, the budget now gives "
                          f"{steps}; use a fresh --workdir (or the config it was run with)")
      results["pretrain"][(family, seed)] = stage(
          pre_dir, f"{family} seed {seed} pretrain ({steps} steps)",
          lambda: {"steps": steps, "eval": _numbers(train(config, pre_dir, devices))})
      for task in c.finetune.tasks:
        ft_dir = os.path.join(base, task)
        os.makedirs(ft_dir, exist_ok=True)
        ft_config = finetune_config(c, task, seed)
        metric = ft_config.classify.metric or task_of(ft_config).metric
        results["finetune"][(family, seed, task)] = stage(
            ft_dir, f"{family} seed {seed} {task}",
            lambda: _finetune_result(
                finetune(ft_config, ft_dir, init_from=pre_dir, devices=devices), metric))
  return results


# --- the report -------------------------------------------------------------------------------

def mean_std(values) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for a single value) of the finite values."""
  values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
  if not values:
    return math.nan, math.nan
  return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _cell(values, scale: float = 1.0, digits: int = 3) -> str:
  mean, std = mean_std([v * scale for v in values if v is not None])
  if math.isnan(mean):
    return "n/a"
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


def write_report(c, workdir: str, results: dict) -> str:
  costs, budget = results["costs"], results["budget"]
  fams, seeds = c.families, c.seeds
  plot_dir = os.path.join(workdir, "plots")
  figures = {
      "loss_vs_flops.png": plots.line_figure(
          _loss_curves(workdir, c, costs), os.path.join(plot_dir, "loss_vs_flops.png"),
          "pretraining FLOPs (model FLOPs)", "train loss (the whole objective)",
          "Pretraining loss against FLOPs"),
      "params.png": plots.bar_figure(
          {f: costs[f]["params"] / 1e6 for f in fams}, os.path.join(plot_dir, "params.png"),
          "parameters (M)", "Parameters per family")}
  unit = "model FLOPs" if c.match == "flops" else "tokens"
  lines = [f"# Family comparison: {c.name}", "",
           f"Matched {c.match}: budget {budget:.4g} {unit}"
           f" per run; seeds {', '.join(map(str, seeds))}; corpus `{c.corpus}`; each family's own "
           f"tokenizer kind trained on it with {c.pretrain.vocab_size} entries; batch "
           f"{c.pretrain.batch_size} x {c.pretrain.max_seq_length} tokens. Values are mean ± "
           "sample standard deviation over the seeds.", "",
           "## Compute", ""]
  lines += _table(["family", "size", "params", "FLOPs/token", "tokens/step", "steps",
                   "pretraining FLOPs", "tokens"],
                  [[f, c.sizes[f], f"{costs[f]['params'] / 1e6:.2f}M",
                    f"{costs[f]['flops_per_token']:.3g}", str(costs[f]["tokens_per_step"]),
                    str(costs[f]["steps"]), f"{costs[f]['flops']:.3g}", f"{costs[f]['tokens']:,}"]
                   for f in fams])
  measures = pretrain_measures(results, c)
  lines += ["## Pretraining (final eval)", ""]
  names = list(measures)
  lines += _table(["family", *names], [[f, *(_cell(measures[m].get(f, [])) for m in names)]
                                       for f in fams])
  lines += ["The eval loss is the whole objective's (BERT's with NSP, ALBERT's with SOP); the "
            "token loss only predicting tokens: masked tokens (mlm_accuracy), the next token "
            "(GPT, lm_accuracy) or XLNet's permuted targets (plm_accuracy). Perplexity is "
            "exp(token loss), comparable within one kind of objective only.", ""]
  strengths = []
  lines += ["## Downstream", ""]
  for task in c.finetune.tasks:
    scores = {f: [results["finetune"][(f, s, task)]["score"] for s in seeds] for f in fams}
    any_result = results["finetune"][(fams[0], seeds[0], task)]
    metric, split = any_result["metric"], any_result["split"]
    rows = []
    for f in fams:
      mean, _ = mean_std(scores[f])
      per_point = costs[f]["flops"] / (100 * mean) if mean and mean > 0 else math.nan
      rows.append([f, _cell(scores[f]), f"{per_point:.3g}"])
    lines += [f"### {task}: {metric} ({split} split)", ""]
    lines += _table(["family", metric, "pretraining FLOPs per point"], rows)
    strengths.append((f"{task} {metric}", {f: mean_std(scores[f])[0] for f in fams}, True))
    name = f"downstream_{task}.png"
    figures[name] = plots.scatter_figure(
        {f: (costs[f]["flops"], *mean_std(scores[f])) for f in fams},
        os.path.join(plot_dir, name), "pretraining FLOPs", f"{task} {metric}",
        f"{task}: {metric} against pretraining FLOPs")
  lines += ["Question answering and generation are not in this first version of the "
            "comparison: tasks that need no download exist for classification only.", ""]
  if results["bench"]:
    keys = [k for k in ("tokens_per_s", "step_ms", "peak_mem_gib", "temp_gib", "argument_gib",
                        "compile_s") if any(k in b for b in results["bench"].values())]
    lines += ["## Throughput and memory (`bench`)", ""]
    lines += _table(["family", *keys], [[f, *(str(results["bench"].get(f, {}).get(k, "n/a"))
                                             for k in keys)] for f in fams])
  for measure, per_family in measures.items():
    higher = "loss" not in measure and not measure.startswith("perplexity")
    strengths.append((measure, {f: mean_std(v)[0] for f, v in per_family.items()}, higher))
  lines += ["## Measured strengths and weaknesses", ""]
  rows = []
  for measure, values, higher in strengths:
    finite = {f: v for f, v in values.items() if not math.isnan(v)}
    if len(finite) < 2:
      continue
    ranked = sorted(finite, key=finite.get, reverse=higher)
    rows.append([measure, f"{ranked[0]} ({finite[ranked[0]]:.3f})",
                 f"{ranked[-1]} ({finite[ranked[-1]]:.3f})"])
  lines += _table(["measure", "best", "worst"], rows)
  lines += ["## Plots", ""] + [f"![{n}](plots/{n})" for n, path in figures.items() if path] + [""]
  out = os.path.join(workdir, REPORT_FILE)
  with open(out, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  return out


def compare(c, workdir: str) -> dict:
  """Runs (or continues) the comparison of config `c` in `workdir`; writes its report."""
  validate(c)
  os.makedirs(workdir, exist_ok=True)
  results = run_all(c, workdir)
  if results is None:
    return {}
  report = write_report(c, workdir, results)
  console(f"compare: report {report}")
  return results
