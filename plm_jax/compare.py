"""`plm-jax compare`: the families pretrained at matched compute, fine-tuned on the same tasks
with the same seeds, and one report (DIR/report.md and its PNGs) of what was measured.

Layout of DIR (each stage its own workdir, so a rerun continues what is unfinished):
  tasks/<task>/<split>.json[l]      the built-in downstream tasks (data/builtin_tasks.py)
  <family>/seed<k>/pretrain/        a `plm-jax train` workdir
  <family>/seed<k>/<task>/          a `plm-jax finetune` workdir initialised from pretrain/
  <family>/bench/                   `bench` of the family's pretraining config (config.bench)
  report.md, plots/*.png            rewritten from the stages' results at every run
A stage that finished holds RESULT_FILE (written last); a rerun skips it and reads it back.

The budget: match="flops" gives every family the same model FLOPs (flops.py's convention, the
one `plan` and `bench` use: families.Family.flops_per_token x tokens per step), match="tokens"
the same tokens; train.steps = round(budget / per-step cost), at least 1. match="params" sizes
each family's width to the same parameter count (param_match.py) and trains all on the
reference's tokens.
"""

import dataclasses
import importlib.util
import json
import math
import os
import re
import statistics
from typing import Callable

import jax
import numpy as np

from plm_jax import configs as presets, families
from plm_jax.run import plots
from plm_jax.bench import bench
from plm_jax.data import loader
from plm_jax.data.builtin_tasks import (ABOUT, BASELINES, PRETRAIN_FILE, SPLITS,
                                        task_paths, write_builtin_tasks,
                                        write_pretraining_text)
from plm_jax.errors import ConfigError
from plm_jax.finetune.classify.run import CLASSIFICATION
from plm_jax.finetune.qa.metrics import squad_metrics
from plm_jax.finetune.qa.run import QUESTION_ANSWERING
from plm_jax.finetune.seq2seq.metrics import generation_metrics
from plm_jax.finetune.run import task_fields
from plm_jax.finetune.seq2seq.run import GENERATION
from plm_jax.finetune.seq2seq.tasks import gen_task_of
from plm_jax.run.metrics_writer import console
from plm_jax.models.config import padded_vocab
from plm_jax.param_match import count_params, match_width, with_width
from plm_jax.plan import plan
from plm_jax.pretrain import train
from plm_jax.finetune.classify.tasks import task_of

RESULT_FILE = "compare_result.json"
REPORT_FILE = "report.md"
PRETRAIN = "pretrain"
TASKS_DIR = "tasks"
MATCHES = ("flops", "tokens", "params")
BENCH_MODES = ("off", "compile", "time")
UNITS = {"flops": "model FLOPs", "tokens": "tokens", "params": "parameters"}


# --- the downstream stages --------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Downstream:
  """One kind of downstream stage: where its fields are in the compare config, the fine-tuning
  preset it starts from, the built-in tasks it reads from files, and which families can."""

  group: str                     # the compare config's group (classify | qa | generate)
  title: str                     # the report's name of the kind
  preset: str                    # the fine-tuning config file (classify | qa | seq2seq)
  builtin: dict                  # {built-in task: the preset's local-file task}
  run: Callable                  # (config, workdir, init_from, devices) -> final report
  can: Callable                  # (families.Family) -> bool
  metric: Callable               # (config) -> the metric the report ranks by
  shown: tuple                   # the metrics of its tables (the ranked one first)
  cannot: str = ""               # why a family that cannot is left out


DOWNSTREAM = (
    Downstream("classify", "classification", "classify", {"word_order": "jsonl"},
               CLASSIFICATION.finetune, lambda family: True,
               lambda config: config.classify.metric or task_of(config).metric, ()),
    Downstream("qa", "question answering", "qa", {"cloze": "json"},
               QUESTION_ANSWERING.finetune,
               lambda family: family.span_model is not None,
               lambda config: config.classify.metric or "f1", ("f1", "exact_match"),
               "extractive QA needs a bidirectional encoder"),
    Downstream("generate", "generation", "seq2seq", {"unshuffle": "jsonl"},
               GENERATION.finetune, lambda family: family.decoder,
               lambda config: gen_task_of(config).metric,
               ("bleu", "rougeL", "exact_match", "perplexity"),
               "generation fine-tuning needs a decoder"),
)
BUILTIN_TASKS = {task for kind in DOWNSTREAM for task in kind.builtin}


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


def normalise(c) -> None:
  """`--config.families=bert,gpt` (one string: ml_collections reads a tuple from the command
  line only as "('bert', 'gpt')") as the tuple it means; the same for the stages' tasks."""
  def split(values):
    return tuple(v.strip() for value in values for v in str(value).split(",") if v.strip())
  with c.unlocked():
    c.families = split(c.families)
    for kind in DOWNSTREAM:
      c[kind.group].tasks = split(c[kind.group].tasks)


def uses_reference(c) -> bool:
  """Whether the budget comes from reference_family: without a budget of its own, and always
  matching parameters (the tokens every family trains on are the reference's)."""
  return c.budget <= 0 or c.match == "params"


def validate(c) -> None:
  unknown = [f for f in c.families if f not in families.FAMILIES]
  if unknown or not c.families:
    raise ConfigError(f"compare families {unknown or '()'}: give one or more of "
                      f"{', '.join(families.FAMILIES)}, e.g. --config.families=bert,gpt")
  if c.devices < 0 or c.devices > jax.device_count():
    raise ConfigError(f"compare devices={c.devices} must be in [0, {jax.device_count()}] (0 = "
                      "all of this host's)")
  if c.match not in MATCHES:
    raise ConfigError(f"compare match={c.match!r} is not one of {', '.join(MATCHES)}")
  if c.bench not in BENCH_MODES:
    raise ConfigError(f"compare bench={c.bench!r} is not one of {', '.join(BENCH_MODES)}")
  if c.task_examples < 0:
    raise ConfigError(f"compare task_examples={c.task_examples} must be >= 0 (0 = all)")
  if not c.seeds:
    raise ConfigError("compare seeds=() runs nothing; give one or more seeds")
  if uses_reference(c) and (c.reference_family not in families.FAMILIES
                            or c.reference_steps <= 0):
    raise ConfigError("give compare reference_family (a family) and reference_steps > 0"
                      + ("" if c.match == "params" else ", or budget > 0"))
  repeated = [x for group in (c.families, c.seeds) for x in set(group) if group.count(x) > 1]
  if repeated:
    raise ConfigError(f"compare families and seeds name each once: {repeated} repeated")
  needed = {*c.families, *([c.reference_family] if uses_reference(c) else [])}
  missing = [f for f in needed if f not in c.sizes]
  if missing:
    raise ConfigError(f"compare sizes has no entry for {', '.join(sorted(missing))}")
  seen: dict = {}
  for kind in DOWNSTREAM:
    s = c[kind.group]
    for task in s.tasks:
      if task in seen or task == PRETRAIN:
        raise ConfigError(f"compare task {task!r} is named twice ({seen.get(task, PRETRAIN)} "
                          f"and {kind.group}.tasks): each task is a directory of its own")
      seen[task] = f"{kind.group}.tasks"
      home = next((k for k in DOWNSTREAM if task in k.builtin), None)
      if home is not None and home is not kind:
        raise ConfigError(f"compare {kind.group}.tasks: {task!r} is a {home.title} task; "
                          f"name it in {home.group}.tasks")
      if home is None:       # a named task of the preset: known before anything runs
        try:
          load_config_file(f"{kind.preset}:{task}")
        except ConfigError as e:
          raise ConfigError(f"compare {kind.group}.tasks: {e}") from None
    if s.tasks and (s.steps < 0 or s.batch_size < 1 or s.max_seq_length < 8
                    or (s.steps == 0 and s.epochs <= 0)):
      raise ConfigError(f"compare {kind.group}: give steps > 0 (or steps=0 and epochs > 0), "
                        "batch_size >= 1 and max_seq_length >= 8")


def pretrain_config(c, family: str, seed: int, steps: int = 1, hidden: int = 0):
  """The family's preset with the comparison's shared corpus, vocabulary, batch and length
  (and, hidden > 0, the width that matches the parameter budget)."""
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
  return with_width(config, hidden) if hidden else config


def family_config(c, costs: dict, family: str, seed: int):
  """The family's pretraining config with its budgeted steps (and matched width)."""
  cost = costs[family]
  return pretrain_config(c, family, seed, cost["steps"], cost.get("hidden", 0))


def downstream_config(c, kind: Downstream, task: str, seed: int, files: dict):
  """The fine-tuning config of `task`: its preset (a built-in task: the preset's local-file
  task reading the files compare wrote) with the stage's schedule and the seed."""
  s = c[kind.group]
  config = load_config_file(f"{kind.preset}:{kind.builtin.get(task, task)},mesh={c.mesh}")
  with config.unlocked():
    fields = task_fields(config)
    if task in kind.builtin:
      train, validation, test = (files[task][split] for split in SPLITS)
      fields.train_path, fields.eval_path, fields.test_path = train, validation, test
    config.train.seed = seed
    config.train.batch_size = s.batch_size
    config.data.max_seq_length = s.max_seq_length
    config.optim.learning_rate = s.learning_rate
    config.train.eval_every = s.eval_every
    if s.steps > 0:
      fields.epochs = 0.0
      config.train.steps = s.steps
      config.train.log_every = max(1, s.steps // 5)
    else:
      fields.epochs = s.epochs
    if kind.group == "qa":
      config.qa.max_query_length = s.max_query_length
      config.qa.doc_stride = s.doc_stride
    if kind.group == "generate":
      config.seq2seq.eval_examples = 0            # the best checkpoint by validation loss
      config.seq2seq.report_examples = s.report_examples
      config.seq2seq.max_new_tokens = s.max_new_tokens
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
          "step_flops": float(per_token) * tokens, "hidden_size": m.hidden_size}


def steps_for(budget: float, per_step: float) -> int:
  return max(1, int(round(budget / per_step)))


def plan_budget(c) -> tuple[float, dict]:
  """(budget, {family: cost with "steps"}): every family's steps for the matched budget (and,
  matching parameters, its width: "hidden")."""
  reference = step_cost(pretrain_config(c, c.reference_family, 0)) if uses_reference(c) \
      else None
  widths = {}
  if c.match == "params":
    budget = c.budget if c.budget > 0 else float(reference["params"])
    widths = {f: match_width(pretrain_config(c, f, 0), int(budget))[0] for f in c.families}
  costs = {f: step_cost(pretrain_config(c, f, 0, hidden=widths.get(f, 0)))
           for f in c.families}
  unit = "step_flops" if c.match == "flops" else "tokens_per_step"
  spend = c.budget if c.budget > 0 and c.match != "params" else \
      reference[unit] * c.reference_steps
  for family, cost in costs.items():
    if family in widths:
      cost["hidden"] = widths[family]
    cost["steps"] = steps_for(spend, cost[unit])
    cost["flops"] = cost["steps"] * cost["step_flops"]
    cost["tokens"] = cost["steps"] * cost["tokens_per_step"]
  return (budget if c.match == "params" else spend), costs


# --- stages -----------------------------------------------------------------------------------

# --- the scores of a model that learned nothing ---

def baseline(task: str, path: str, limit: int = 0, seed: int = 0) -> dict:
  """The metrics of BASELINES[task] on the split file at `path` (accuracy a fraction, the
  others percentages, as the fine-tuning reports give them); limit > 0: on the first `limit`
  records only (generation decodes the first report_examples)."""
  if task == "word_order":
    with open(path, encoding="utf-8") as f:
      labels = [json.loads(line)["label"] for line in f]
    return {"accuracy": max(labels.count(x) for x in set(labels)) / len(labels)}
  if task == "cloze":
    rng = np.random.default_rng(seed)
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
    golds, guesses = {}, {}
    for paragraph in data["data"][0]["paragraphs"]:
      words = re.findall(r"[A-Za-z]{4,}", paragraph["context"])
      for qa in paragraph["qas"]:
        golds[qa["id"]] = [a["text"] for a in qa["answers"]]
        guesses[qa["id"]] = words[int(rng.integers(len(words)))]
    out = squad_metrics(golds, guesses, v2=False)
    return {k: out[k] for k in ("f1", "exact_match")}
  if task == "unshuffle":
    with open(path, encoding="utf-8") as f:
      records = [json.loads(line) for line in f][:limit or None]
    return generation_metrics([r["source"] for r in records], [r["target"] for r in records])
  raise ValueError(f"no built-in task {task!r}")


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


def stage(workdir: str, name: str, run, setup: dict) -> dict:
  """The stage's result: read back when it finished before with the same `setup` (what
  decides its result), else `run()`'s, saved with the setup. A finished stage of another
  setup is refused: its result would be reported as this config's."""
  setup = json.loads(json.dumps(setup))          # as it reads back: tuples are lists
  done = read_result(workdir)
  if done is not None:
    before = done.get("setup") or {}
    if before != setup:
      differ = sorted(k for k in {*before, *setup} if before.get(k) != setup.get(k))
      raise ConfigError(f"{workdir} finished with another setup ({', '.join(differ)} "
                        "differ): rerun with the config it was made with, or use a fresh "
                        "--workdir")
    console(f"compare: {name}: skipped (finished: {os.path.join(workdir, RESULT_FILE)})")
    return done
  console(f"compare: {name}: running in {workdir}")
  os.makedirs(workdir, exist_ok=True)
  result = {**run(), "setup": setup}
  write_result(workdir, result)
  return result


def _numbers(d: dict) -> dict:
  return {k: float(v) for k, v in d.items()
          if isinstance(v, (int, float)) and not isinstance(v, bool)}


def downstream_result(report: dict, metric: str) -> dict:
  """A fine-tuning run's final report, as compare keeps it: the metric it is ranked by, on the
  test split when that split has it (labelled) else on validation, and the split's numbers
  (with the perplexity of a loss)."""
  split = "test" if isinstance(report.get("test"), dict) and metric in report["test"] \
      else "validation"
  numbers = _numbers(report[split])
  if "loss" in numbers and "perplexity" not in numbers:
    numbers["perplexity"] = math.exp(min(numbers["loss"], 50.0))
  return {"metric": metric, "split": split, "score": numbers[metric], "numbers": numbers}


def estimate(c, costs: dict) -> float | None:
  """Prints `plan`'s memory and step time of every family's pretraining on c.topology, and
  the pretraining time of the whole comparison; returns it in seconds (None if unknown)."""
  total = 0.0
  for family, cost in costs.items():
    p = plan(family_config(c, costs, family, c.seeds[0]), c.topology)
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


def tasks_dir(c, workdir: str) -> str:
  """Where the built-in tasks are written: DIR/tasks, or DIR/tasks-first<N> with only the
  first task_examples records of each split (another directory: files of one cap only)."""
  return os.path.join(workdir, TASKS_DIR + (f"-first{c.task_examples}" if c.task_examples
                                            else ""))


def builtin_task_files(c, workdir: str) -> dict:
  """{task: {split: path}} of the built-in tasks the config names, written into DIR/tasks
  once (the same files on every run: they are drawn with fixed seeds)."""
  wanted = [t for kind in DOWNSTREAM for t in c[kind.group].tasks if t in BUILTIN_TASKS]
  if not wanted:
    return {}
  out = tasks_dir(c, workdir)
  files = task_paths(out)
  if not all(os.path.exists(p) for t in wanted for p in files[t].values()):
    console(f"compare: writing the built-in tasks {', '.join(wanted)} into {out}")
    write_builtin_tasks(out, c.task_examples)
  return files


def pretraining_corpus(c, workdir: str, files: dict) -> str:
  """The text file every family pretrains on when the corpus is the built-in one and built-in
  tasks are run: the corpus less the tasks' validation and test docstrings (written once);
  "" = c.corpus as it is."""
  if c.corpus != "builtin" or not files:
    return ""
  path = os.path.join(tasks_dir(c, workdir), PRETRAIN_FILE)
  if not os.path.exists(path):
    write_pretraining_text(tasks_dir(c, workdir))
  return path


def with_corpus(config, path: str):
  if path:
    with config.unlocked():
      config.data.source = "text"
      config.data.path = path
      config.data.doc_per_file = False
  return config


def corpus_name(c, path: str) -> str:
  return (f"`{c.corpus}` less the built-in tasks' validation and test docstrings" if path
          else f"`{c.corpus}`")


def model_setup(config) -> dict:
  """What of a pretraining config decides a stage's result besides its own fields."""
  m, d = config.model, config.data
  return {"family": m.family, "size": m.size, "hidden_size": m.hidden_size,
          "mlp_dim": m.mlp_dim, "num_layers": m.num_layers, "vocab_size": d.vocab_size,
          "max_seq_length": d.max_seq_length, "batch_size": config.train.batch_size}


def run_all(c, workdir: str) -> dict | None:
  """Runs (or skips) every stage; returns what the report is made of (None with
  c.plan_only: the estimate only)."""
  devices = jax.devices()[:c.devices] if c.devices > 0 else None
  budget, costs = plan_budget(c)
  console(f"compare: match {c.match}, budget {budget:.4g} {UNITS[c.match]}; "
          + "; ".join(f"{f} {cost['params'] / 1e6:.2f}M params"
                      + (f" (hidden {cost['hidden']})" if "hidden" in cost else "")
                      + f", {cost['steps']} steps" for f, cost in costs.items()))
  if c.topology:
    estimate(c, costs)
  results = {"budget": budget, "costs": costs, "pretrain": {}, "downstream": {}, "bench": {}}
  if c.plan_only:
    return None
  files = builtin_task_files(c, workdir)
  corpus = pretraining_corpus(c, workdir, files)
  results["corpus"] = corpus_name(c, corpus)
  for family in c.families:
    steps = costs[family]["steps"]
    if c.bench != "off":
      bench_config = family_config(c, costs, family, c.seeds[0])
      results["bench"][family] = stage(
          os.path.join(workdir, family, "bench"), f"{family} bench",
          lambda: _numbers(bench(bench_config, compile_only=c.bench == "compile")),
          {"bench": c.bench, **model_setup(bench_config)})
    for seed in c.seeds:
      base = os.path.join(workdir, family, f"seed{seed}")
      pre_dir = os.path.join(base, PRETRAIN)
      config = with_corpus(family_config(c, costs, family, seed), corpus)
      pre_setup = {**model_setup(config), "steps": steps, "seed": seed,
                   "corpus": corpus_name(c, corpus),
                   "learning_rate": config.optim.learning_rate}
      results["pretrain"][(family, seed)] = stage(
          pre_dir, f"{family} seed {seed} pretrain ({steps} steps)",
          lambda: {"steps": steps, "eval": _numbers(train(config, pre_dir, devices)),
                   "tokens_per_s": pretrain_throughput(pre_dir)}, pre_setup)
      for kind in DOWNSTREAM:
        if not kind.can(families.get(family)):
          continue
        fields = {k: v for k, v in c[kind.group].to_dict().items() if k != "tasks"}
        for task in c[kind.group].tasks:
          ft_dir = os.path.join(base, task)
          ft_config = downstream_config(c, kind, task, seed, files)
          metric = kind.metric(ft_config)
          results["downstream"][(family, seed, task)] = stage(
              ft_dir, f"{family} seed {seed} {task} ({kind.title})",
              lambda: downstream_result(
                  kind.run(ft_config, ft_dir, init_from=pre_dir, devices=devices), metric),
              {"task": task, **fields, "task_examples": c.task_examples,
               "pretrain": pre_setup})
  return results


# --- the report -------------------------------------------------------------------------------

def mean_std(values) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for a single value) of the finite values."""
  values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
  if not values:
    return math.nan, math.nan
  return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _cell(values, digits: int = 3) -> str:
  mean, std = mean_std(values)
  if math.isnan(mean):
    return "n/a"
  digits = 0 if abs(mean) >= 1000 else digits     # tokens/s: no decimals
  return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
  return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
          *("| " + " | ".join(r) + " |" for r in rows), ""]


def pretrain_throughput(run_dir: str) -> float | None:
  """The median tokens/s of a pretraining run's train records after its first step (the
  first holds the compilation)."""
  points = plots.read_curves(run_dir, skipped=()).get("train", {}).get("tokens_per_s", [])
  values = [v for step, v in points if step > 1]
  return statistics.median(values) if values else None


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
  costs, budget = results["costs"], results["budget"]
  fams, seeds = c.families, c.seeds
  plot_dir = os.path.join(workdir, "plots")
  throughput = {f: [results["pretrain"][(f, s)].get("tokens_per_s") for s in seeds]
                for f in fams}
  figures = {
      "loss_vs_flops.png": plots.line_figure(
          _loss_curves(workdir, c, costs), os.path.join(plot_dir, "loss_vs_flops.png"),
          "pretraining FLOPs (model FLOPs)", "train loss (the whole objective)",
          "Pretraining loss against FLOPs"),
      "params.png": plots.bar_figure(
          {f: costs[f]["params"] / 1e6 for f in fams}, os.path.join(plot_dir, "params.png"),
          "parameters (M)", "Parameters per family"),
      "throughput.png": plots.bar_figure(
          {f: mean_std(v)[0] / 1e3 for f, v in throughput.items()
           if not math.isnan(mean_std(v)[0])}, os.path.join(plot_dir, "throughput.png"),
          "thousand tokens/s (pretraining, measured)", "Pretraining throughput")}
  lines = [f"# Family comparison: {c.name}", "",
           f"{_budget_line(c, budget, costs)}; seeds {', '.join(map(str, seeds))}; corpus "
           f"{results['corpus']}; each family's own tokenizer kind trained on it with "
           f"{c.pretrain.vocab_size} entries; batch {c.pretrain.batch_size} x "
           f"{c.pretrain.max_seq_length} tokens. Values are mean ± sample standard deviation "
           "over the seeds.", "", "## Compute", ""]
  lines += _table(["family", "size", "hidden", "params", "FLOPs/token", "tokens/step", "steps",
                   "pretraining FLOPs", "tokens"],
                  [[f, c.sizes[f], str(costs[f]["hidden_size"]),
                    f"{costs[f]['params'] / 1e6:.2f}M", f"{costs[f]['flops_per_token']:.3g}",
                    str(costs[f]["tokens_per_step"]), str(costs[f]["steps"]),
                    f"{costs[f]['flops']:.3g}", f"{costs[f]['tokens']:,}"] for f in fams])
  measures = pretrain_measures(results, c)
  lines += ["## Pretraining (final eval)", ""]
  names = list(measures)
  lines += _table(["family", *names], [[f, *(_cell(measures[m].get(f, [])) for m in names)]
                                       for f in fams])
  lines += ["The eval loss is the whole objective's (BERT's with NSP, ALBERT's with SOP); the "
            "token loss only predicting tokens: masked tokens (mlm_accuracy), the next token "
            "(GPT, lm_accuracy) or XLNet's permuted targets (plm_accuracy). Perplexity is "
            "exp(token loss), comparable within one kind of objective only.", ""]
  columns: list[Measure] = []
  floors: dict = {}
  lines += ["## Downstream", ""]
  for kind in DOWNSTREAM:
    for task in c[kind.group].tasks:
      able = [f for f in fams if (f, seeds[0], task) in results["downstream"]]
      if not able:
        lines += [f"### {task} ({kind.title})", "",
                  f"Not run: no family compared can ({kind.cannot}).", ""]
        continue
      runs = {f: [results["downstream"][(f, s, task)] for s in seeds] for f in able}
      first = runs[able[0]][0]
      metric, split = first["metric"], first["split"]
      shown = [metric, *(m for m in kind.shown if m != metric and m in first["numbers"])]
      # classification metrics are fractions, QA's and generation's percentages: a point is
      # one of 100 for all
      scale = 100.0 if kind.group == "classify" else 1.0
      rows = []
      for f in able:
        mean, _ = mean_std([r["score"] for r in runs[f]])
        per_point = costs[f]["flops"] / (scale * mean) if mean > 0 else math.nan
        rows.append([f, *(_cell([r["numbers"].get(m) for r in runs[f]]) for m in shown),
                     f"{per_point:.3g}"])
      lines += [f"### {task} ({kind.title}): {metric}, {split} split", ""]
      if task in ABOUT:
        # what a model that learned nothing scores: a family's score means something above it
        lines += [f"Built-in: {ABOUT[task]}. Baseline: {BASELINES[task]}.", ""]
        # generation decodes the first report_examples prompts: the baseline on the same
        floor = baseline(task, task_paths(tasks_dir(c, workdir))[task][split],
                         limit=int(first["numbers"].get("decoded", 0)))
        floors[task] = floor.get(metric)
        rows.append(["*baseline*", *(f"*{floor[m]:.3f}*" if m in floor else "" for m in shown),
                     ""])
      lines += _table(["family", *shown, "pretraining FLOPs per point"], rows)
      left_out = [f for f in fams if f not in able]
      if left_out and kind.cannot:
        lines += [f"Not run: {', '.join(left_out)} ({kind.cannot}).", ""]
      columns.append(Measure(f"{task} {metric}", {f: [r["score"] for r in runs[f]]
                                                  for f in able}, floor=floors.get(task)))
      if kind.group == "generate" and "perplexity" in first["numbers"]:
        columns.append(Measure(f"{task} target perplexity", {
            f: [r["numbers"].get("perplexity") for r in runs[f]] for f in able}, False))
      name = f"downstream_{task}.png"
      figures[name] = plots.scatter_figure(
          {f: (costs[f]["flops"], *mean_std([r["score"] for r in runs[f]])) for f in able},
          os.path.join(plot_dir, name), "pretraining FLOPs", f"{task} {metric}",
          f"{task}: {metric} against pretraining FLOPs")
  lines += ["## Throughput and memory", ""]
  keys = [k for k in ("tokens_per_s", "step_ms", "mfu", "peak_mem_gib", "temp_gib",
                      "argument_gib")
          if any(k in b for b in results["bench"].values())]
  lines += _table(["family", "pretraining tokens/s (measured in the runs)",
                   *(f"bench {k}" for k in keys)],
                  [[f, _cell(throughput[f], 0), *(str(results["bench"].get(f, {}).get(k, "n/a"))
                                                   for k in keys)] for f in fams])
  lines += [f"Measured on {c.devices or jax.device_count()} x {jax.devices()[0].device_kind} "
            "(this run's devices; a run resumed elsewhere mixes machines)"
            + ("; `bench` compiles each family's pretraining step on its own (memory per device)"
               if keys else "; `bench` off (compare's `bench` field: compile or time)") + ".",
            ""]
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


def strengths_and_weaknesses(columns: list[Measure], fams: list[str]) -> list[str]:
  """A table of every measure (mean ± spread; the best in bold) and, per family, the measures
  it is best and worst at among the families that have them."""
  # a measure ranks the families that have it when they differ (ties share the rank); one
  # only a single family has (generation: GPT) is shown, not ranked
  columns = [m for m in columns if m.means()]
  best, worst = {f: [] for f in fams}, {f: [] for f in fams}
  marked = []
  for m in columns:
    means = m.means()
    if len(set(means.values())) < 2 or not m.ranked or not m.learned():
      marked.append(set())
      continue
    sign = 1 if m.higher_is_better else -1
    top, bottom = max(sign * v for v in means.values()), min(sign * v for v in means.values())
    marked.append({f for f, v in means.items() if sign * v == top})
    for f, v in means.items():
      if sign * v == top:
        best[f].append(m.name)
      if sign * v == bottom:
        worst[f].append(m.name)
  lines = ["## Measured strengths and weaknesses", ""]
  if not columns:
    return lines + ["No measure to show.", ""]
  rows = [[f, *(("**" + _cell(m.values[f]) + "**" if f in top else _cell(m.values[f]))
                if f in m.values else "—" for m, top in zip(columns, marked))] for f in fams]
  lines += _table(["family", *(m.name + ("" if not m.ranked else "" if m.higher_is_better
                                         else " (lower is better)")
                               + ("" if m.ranked else " (not ranked)")
                               + ("" if m.learned() else " (none above the baseline)")
                               for m in columns)], rows)
  for f in fams:
    lines.append(f"- **{f}**: best at {', '.join(best[f]) or 'no measure'}; worst at "
                 f"{', '.join(worst[f]) or 'no measure'}.")
  lines += ["", "Ranked by the mean over seeds among the families that have the measure (the "
            "best in bold; a measure of one family is shown, not ranked; the token perplexity "
            "is not ranked either: next-token, masked-token and permuted-order predictions are "
            "different tasks).", ""]
  return lines


def compare(c, workdir: str) -> dict:
  """Runs (or continues) the comparison of config `c` in `workdir`; writes its report."""
  normalise(c)
  validate(c)
  os.makedirs(workdir, exist_ok=True)
  results = run_all(c, workdir)
  if results is None:
    return {}
  report = write_report(c, workdir, results)
  console(f"compare: report {report}")
  return results
