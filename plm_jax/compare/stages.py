"""compare's stages: the kinds of downstream stage, the checks of a compare config, each
stage's config, and running (or, finished, reading back) every stage: bench, pretraining and
fine-tuning per family and seed. A finished stage holds RESULT_FILE (written last)."""

import csv
import glob
import json
import math
import os
import re
import statistics

import jax
import numpy as np

from plm_jax import configs as presets, families
from plm_jax.sizing.bench import bench
from plm_jax.compare.budget import (MATCHES, UNITS, estimate, family_config, plan_budget,
                                    uses_reference)
from plm_jax.data.builtin_tasks import (PRETRAIN_FILE, SPLITS, task_paths,
                                        write_builtin_tasks, write_pretraining_text)
from plm_jax.errors import ConfigError
from plm_jax.finetune.kinds import KINDS
from plm_jax.finetune.run import Downstream
from plm_jax.finetune.qa.metrics import squad_metrics
from plm_jax.finetune.seq2seq.metrics import generation_metrics
from plm_jax.commands.pretrain import train
from plm_jax.run import plots
from plm_jax.run.metrics_writer import console

RESULT_FILE = "compare_result.json"
PRETRAIN = "pretrain"
TASKS_DIR = "tasks"
BENCH_MODES = ("off", "compile", "time")


# The kinds of downstream stage, in the kind registry's order: each kind says its own
# (Kind.compare_stage, plm_jax/finetune/<kind>/run.py).
DOWNSTREAM = tuple(stage for stage in (kind.compare_stage() for kind in KINDS.values()) if stage)
BUILTIN_TASKS = {task for kind in DOWNSTREAM for task in kind.builtin}


# --- configs ----------------------------------------------------------------------------------

def normalise(c) -> None:
  """`--config.families=bert,gpt` (one string: ml_collections reads a tuple from the command
  line only as "('bert', 'gpt')") as the tuple it means; the same for the stages' tasks."""
  def split(values):
    return tuple(v.strip() for value in values for v in str(value).split(",") if v.strip())
  with c.unlocked():
    c.families = split(c.families)
    for kind in DOWNSTREAM:
      s = c[kind.group]
      s.tasks = split(s.tasks) + ((s.own.name,) if s.own.name and s.own.name not in
                                  split(s.tasks) else ())


def validate(c) -> None:
  validate_corpus(c)
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
  _validate_stages(c)


def _validate_stages(c) -> None:
  """Each downstream stage: its tasks named once, in the right kind, known before anything runs."""
  seen: dict = {}
  for kind in DOWNSTREAM:
    s = c[kind.group]
    for task in s.tasks:
      if task in seen or task == PRETRAIN:
        raise ConfigError(f"compare task {task!r} is named twice ({seen.get(task, PRETRAIN)} "
                          f"and {kind.group}.tasks): each task is a directory of its own")
      seen[task] = f"{kind.group}.tasks"
      if task == s.own.name:
        continue
      home = next((k for k in DOWNSTREAM if task in k.builtin), None)
      if home is not None and home is not kind:
        raise ConfigError(f"compare {kind.group}.tasks: {task!r} is a {home.title} task; "
                          f"name it in {home.group}.tasks")
      if home is None:       # a named task of the preset: known before anything runs
        try:
          presets.load(f"{kind.preset}:{task}")
        except ConfigError as e:
          raise ConfigError(f"compare {kind.group}.tasks: {e}") from None
    if s.own.name:
      validate_own_task(kind, s.own)
    if s.tasks and (s.steps < 0 or s.batch_size < 1 or s.max_seq_length < 8
                    or (s.steps == 0 and s.epochs <= 0)):
      raise ConfigError(f"compare {kind.group}: give steps > 0 (or steps=0 and epochs > 0), "
                        "batch_size >= 1 and max_seq_length >= 8")


CORPORA = ("builtin", "text", "jsonl", "tfds")


def validate_corpus(c) -> None:
  """The pretraining corpus: a source `train` reads, and files its glob matches."""
  if c.corpus not in CORPORA:
    raise ConfigError(f"compare corpus={c.corpus!r} is not one of {', '.join(CORPORA)}")
  if c.corpus in ("text", "jsonl"):
    found = sorted(glob.glob(c.corpus_path)) if c.corpus_path else []
    if not found:
      raise ConfigError(f"compare corpus={c.corpus}: corpus_path={c.corpus_path!r} matches no "
                        "file; give a glob of the corpus's files, e.g. "
                        "--config.corpus_path='data/*.txt'")
    if c.corpus == "jsonl":
      _has_fields(found[0], "jsonl", [c.corpus_text_field], "corpus_text_field")
  if c.corpus == "tfds" and not c.corpus_tfds_name:
    raise ConfigError("compare corpus=tfds: give --config.corpus_tfds_name=NAME")


def _has_fields(path: str, fmt: str, fields: list, where: str) -> None:
  """Refuses a file whose first record lacks one of `fields` (one line, naming what it has)."""
  try:
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
      if fmt == "csv":
        dialect = csv.excel_tab if path.endswith(".tsv") else csv.excel
        keys = csv.DictReader(f, dialect=dialect).fieldnames or []
      else:
        line = next((x for x in f if x.strip()), "{}")
        keys = list(json.loads(line))
  except (OSError, ValueError, TypeError) as e:
    raise ConfigError(f"compare: {path} cannot be read as {fmt}: {e}") from None
  missing = [x for x in fields if x and x not in keys]
  if missing:
    raise ConfigError(f"compare {where}: {path} has no field {', '.join(map(repr, missing))} "
                      f"(it has {', '.join(map(str, keys)) or 'none'})")


def _squad_file(path: str, where: str) -> None:
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
    paragraph = data["data"][0]["paragraphs"][0]
    paragraph["context"], paragraph["qas"][0]["question"]  # noqa: B018 - the format's keys
  except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
    raise ConfigError(f"compare {where}: {path} is not a SQuAD-format file "
                      f"(data[].paragraphs[].context / qas[].question): {e!r}") from None


def validate_own_task(kind: Downstream, own) -> None:
  """A task of the user's own: its files exist, in a format the kind reads, with its fields."""
  where = f"{kind.group}.own ({own.name})"
  if not own.train_path:
    raise ConfigError(f"compare {where}: give {kind.group}.own.train_path")
  for field in ("train_path", "eval_path", "test_path"):
    path = own[field]
    if not path:
      continue
    fmt = kind.own_format(path)
    if fmt is None:
      raise ConfigError(f"compare {where}: {field}={path!r}: a {kind.title} task reads "
                        f"{' or '.join(e for e, _ in kind.formats)} files")
    if not os.path.isfile(path):
      raise ConfigError(f"compare {where}: {field}={path!r} does not exist")
    if kind.own_fields:
      # a test file may lack the label (it is then not scored)
      names = [own[f] for f in kind.own_fields
               if not (field == "test_path" and f == "label_field")]
      _has_fields(path, fmt, names, where)
    else:
      _squad_file(path, where)


def downstream_config(c, kind: Downstream, task: str, seed: int, files: dict):
  """The fine-tuning config of `task`: its preset (a built-in task: the preset's local-file
  task reading the files compare wrote; the user's own: the preset's file task reading theirs)
  with the stage's schedule and the seed."""
  s = c[kind.group]
  own = task == s.own.name
  preset = kind.own_format(s.own.train_path) if own else kind.builtin.get(task, task)
  config = presets.load(f"{kind.preset}:{preset},mesh={c.mesh}")
  with config.unlocked():
    fields = config.finetune
    if task in kind.builtin:
      train, validation, test = (files[task][split] for split in SPLITS)
      fields.train_path, fields.eval_path, fields.test_path = train, validation, test
    if own:
      fields.train_path, fields.eval_path, fields.test_path = (
          s.own.train_path, s.own.eval_path, s.own.test_path)
      for field in kind.own_fields:
        config[kind.preset][field] = s.own[field]
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
    kind.configure(s, config)
  return config


# --- the scores of a model that learned nothing -----------------------------------------------

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


def with_examples(result: dict, kind: Downstream, workdir: str) -> dict:
  """The result with the per-example records of its split, where the kind writes them: a
  one-seed report tests the families' difference with a paired bootstrap over them."""
  records = kind.records(workdir, result["split"])
  return result if records is None else {**result, "examples": records}


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
  if path:
    return f"`{c.corpus}` less the built-in tasks' validation and test docstrings"
  if c.corpus == "tfds":
    return f"`tfds` {c.corpus_tfds_name}[{c.corpus_tfds_split}]"
  if c.corpus in ("text", "jsonl"):
    n = len(glob.glob(c.corpus_path))
    return (f"`{c.corpus}` files {c.corpus_path} ({n} file{'' if n == 1 else 's'}"
            + (f", field {c.corpus_text_field}" if c.corpus == "jsonl" else "") + ")")
  return f"`{c.corpus}`"


def model_setup(config) -> dict:
  """What of a pretraining config decides a stage's result besides its own fields."""
  m, d = config.model, config.data
  return {"family": m.family, "size": m.size, "hidden_size": m.hidden_size,
          "mlp_dim": m.mlp_dim, "num_layers": m.num_layers, "vocab_size": d.vocab_size,
          "max_seq_length": d.max_seq_length, "batch_size": config.train.batch_size}


def pretrain_throughput(run_dir: str) -> float | None:
  """The median tokens/s of a pretraining run's train records after its first step (the
  first holds the compilation)."""
  points = plots.read_curves(run_dir, skipped=()).get("train", {}).get("tokens_per_s", [])
  values = [v for step, v in points if step > 1]
  return statistics.median(values) if values else None


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
    if c.bench != "off":
      bench_config = family_config(c, costs, family, c.seeds[0])
      results["bench"][family] = stage(
          os.path.join(workdir, family, "bench"), f"{family} bench",
          lambda: _numbers(bench(bench_config, compile_only=c.bench == "compile")),
          {"bench": c.bench, **model_setup(bench_config)})
    for seed in c.seeds:
      base = os.path.join(workdir, family, f"seed{seed}")
      pre_setup = _pretrain_stage(c, results, family, seed, base, corpus, devices)
      _downstream_stages(c, results, family, seed, base, pre_setup, files, devices)
  return results


def _pretrain_stage(c, results: dict, family: str, seed: int, base: str, corpus: str,
                    devices) -> dict:
  """Runs (or reads back) one family's pretraining of one seed; returns its setup."""
  steps = results["costs"][family]["steps"]
  pre_dir = os.path.join(base, PRETRAIN)
  config = with_corpus(family_config(c, results["costs"], family, seed), corpus)
  pre_setup = {**model_setup(config), "steps": steps, "seed": seed,
               "corpus": corpus_name(c, corpus), "learning_rate": config.optim.learning_rate}
  results["pretrain"][(family, seed)] = stage(
      pre_dir, f"{family} seed {seed} pretrain ({steps} steps)",
      lambda: {"steps": steps, "eval": _numbers(train(config, pre_dir, devices)),
               "tokens_per_s": pretrain_throughput(pre_dir)}, pre_setup)
  return pre_setup


def _downstream_stages(c, results: dict, family: str, seed: int, base: str, pre_setup: dict,
                       files: dict, devices) -> None:
  """Runs (or reads back) every downstream task the family can, from its pretraining."""
  pre_dir = os.path.join(base, PRETRAIN)
  for kind in DOWNSTREAM:
    if not kind.can(families.get(family)):
      continue
    fields = {k: v for k, v in c[kind.group].to_dict().items() if k not in ("tasks", "own")}
    for task in c[kind.group].tasks:
      ft_dir = os.path.join(base, task)
      ft_config = downstream_config(c, kind, task, seed, files)
      metric = kind.metric(ft_config)
      results["downstream"][(family, seed, task)] = stage(
          ft_dir, f"{family} seed {seed} {task} ({kind.title})",
          lambda: with_examples(downstream_result(
              kind.run(ft_config, ft_dir, init_from=pre_dir, devices=devices), metric),
              kind, ft_dir),
          {"task": task, **fields, "task_examples": c.task_examples, "pretrain": pre_setup,
           **({"own": c[kind.group].own.to_dict()} if task == c[kind.group].own.name else {})})
