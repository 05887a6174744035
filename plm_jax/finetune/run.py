"""`plm-jax finetune`: what every kind of fine-tuning shares. A pretrained body (its architecture
and tokenizer from --init-from) gets the kind's new head (or, for generation, stays the whole
language model) and is trained on a task; the best checkpoint by the task's metric is kept beside
the latest, a run resumes from its workdir, and the end is a test-split report.

Workdir of a fine-tuning run:
  config.json, tokenizer.json     as for pretraining (model fields copied from --init-from)
  checkpoints/<step>/             the latest checkpoints (params, optimizer state), for resuming
  best/<step>/                    the parameters with the best validation metric so far
  metrics.jsonl, tensorboard/     train and validation metrics
  test_report.json                metrics on the test split (when it is labelled) of the best
  test_predictions.tsv            "index<TAB>prediction" per test record (GLUE's format)
  <split>_examples.json           per-example records of the final report's labelled splits
                                  (compare's one-seed paired bootstrap: Kind.example_records)
"""

import copy
import dataclasses
import json
import math
import os
from typing import Callable

import jax

from plm_jax import checks, configlib, families, objectives, parallel, workdir as workdirs
from plm_jax.hardware import distributed
from plm_jax.data import loader
from plm_jax.data.tokenizer import TextTokenizer
from plm_jax.errors import CheckpointError, ConfigError
from plm_jax.finetune.classify.metrics import higher_is_better
from plm_jax.finetune.predict import (SPLITS, Predictor, eval_name, read_examples,
                                      write_eval_result)
from plm_jax.hf.tables import head_architecture
from plm_jax.inference import load_params
from plm_jax.models.classifier import HEAD_PARAMS
from plm_jax.models.config import padded_vocab
from plm_jax.run import checkpoint
from plm_jax.run.metrics_writer import console, format_metrics
from plm_jax.run.scaffold import Run
from plm_jax.trainer import Trainer

REPORT_FILE = "test_report.json"      # the final report, written by every kind at the end
# Model fields a fine-tuning config sets itself; every other model field (the architecture)
# comes from the run it starts from.
RUNTIME_MODEL_FIELDS = ("dropout_rate", "attention_dropout_rate", "attention_impl", "dtype",
                        "remat")


@dataclasses.dataclass(frozen=True)
class Downstream:
  """What a kind brings to `plm-jax compare` (Kind.compare_stage), one downstream stage: where its fields are in the compare config, the fine-tuning
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
  configure: Callable = lambda s, config: None    # the stage's own fields (s) into the config
  scale: float = 1.0             # score units per point: classification's metrics are
                                 # fractions (100), QA's and generation's percentages (1)
  perplexity: bool = False       # the report also ranks the targets' perplexity
  formats: tuple = ()            # ((file ending, the preset's file task), ...): own tasks
  own_fields: tuple = ()         # the own task's field names, set in config[preset]
  # the per-example records of a run's split, (workdir, split) -> dict | None, and the metric
  # over a resample of them, (records, indices, metric) -> float: one seed's paired bootstrap
  records: Callable = lambda workdir, split: None
  resampled: Callable | None = None

  def own_format(self, path: str) -> str | None:
    return next((task for ending, task in self.formats if path.endswith(ending)), None)


class Kind:
  """One kind of fine-tuning: what it brings to the run they share (`run_finetuning`) and to
  `plm-jax evaluate`. Each kind is a subclass in its sub-package, finetune/<kind>/run.py
  (classification, token tagging, question answering, generation), with one entry in
  plm_jax/finetune/kinds.py. What the layers below a run know of a kind is read through it:
  its config groups and their check (configlib.KINDS), its objective, batch and model head
  (the objectives' table), and the Hugging Face head that head exports as (hf/convert.py)."""

  name: str                # objective.name of its configs

  # --- what the layers below know of it, in one place ---------------------------------------------

  def config_groups(self) -> dict:
    """Its groups beside config.finetune: name -> defaults (plm_jax/configlib.py)."""
    return configlib.KINDS[self.name].groups

  def check(self, config) -> None:
    """Its groups' values against its task table (raises ConfigError naming the fix)."""
    configlib.KINDS[self.name].validate(config)

  def objective(self, config) -> objectives.Objective:
    """Its loss, set up as `config` says."""
    return objectives.get(self.name).for_config(config)

  def model_head(self, config) -> dict:
    """The ModelConfig fields of the head it grows ({} for none: generation keeps the LM's)."""
    return objectives.get(self.name).model_fields(config)

  def hf_architecture(self, config) -> str:
    """The transformers class its fine-tuned model exports as (`plm-jax export-hf`)."""
    return head_architecture(families.get(config.model.family).hf, self.model_head(config))

  def compare_stage(self) -> Downstream | None:
    """Its downstream stage in `plm-jax compare` (None: compare leaves it out)."""
    return None

  # --- the run ---------------------------------------------------------------------------------------

  def start_config(self, config, workdir: str, init_from: str | None, found):
    """(config, tokenizer): the task's fields over the body's architecture (or the workdir's,
    when it resumes)."""
    return start_config(config, workdir, init_from, found)

  def load(self, config, tokenizer, workdir: str, found):
    """Its data (prints its summary; sets the schedule and what the data decides)."""
    raise NotImplementedError

  def metric(self, config, data) -> str:
    """The metric the best checkpoint is chosen by."""
    return config.finetune.metric

  def prepared(self, data, tokenizer):
    """The loader's PreparedData: train, and the validation split served as "eval"."""
    raise NotImplementedError

  def init(self, trainer, config, devices) -> dict:
    """The train state to start from: the pretrained body and a new head."""
    return body_and_new_head(trainer, config.finetune.init_from, devices)

  def describe(self, config, data, metric: str) -> str:
    """The model, as the start-up line says it."""
    raise NotImplementedError

  def start_lines(self, data) -> tuple[str, ...]:
    """More start-up lines (the labels, the tags)."""
    return ()

  def predictor(self, trainer):
    """What evaluates a split (its logits over the eval batches)."""
    return Predictor(trainer)

  def report(self, predictor, params, batches, config, tokenizer, data) -> dict:
    """The validation metrics of `params`."""
    raise NotImplementedError

  def final(self, workdir: str, config, trainer, predictor, tokenizer, data, best_step: int,
            metric: str) -> dict:
    """The final report, written in the workdir."""
    raise NotImplementedError

  def example_records(self, workdir: str, split: str) -> dict | None:
    """The per-example records its final report wrote for `split` ("validation" | "test"),
    {field: [value per example]} (None: none written), for compare's paired bootstrap."""
    return read_examples(workdir, split)

  def resampled_metric(self, records: dict, indices, metric: str) -> float:
    """`metric` over the examples `indices` of `records` (drawn with replacement: a
    bootstrap resample), recomputed as the report computes it."""
    raise NotImplementedError

  def evaluate_split(self, loaded, split: str, name: str, label: str) -> tuple[dict, object]:
    """`plm-jax evaluate`'s report of a restored checkpoint on a split (printed after `label`),
    and None or write(workdir, stem): its predictions beside the report."""
    raise NotImplementedError

  def finetune(self, config, workdir: str, init_from: str | None = None, devices=None) -> dict:
    """Fine-tunes (or resumes fine-tuning in `workdir`); returns the final report."""
    return run_finetuning(self, config, workdir, init_from, devices)

  def evaluate(self, workdir: str, step: int | None = None, best: bool = False,
               split: str = "validation", devices=None, config=None) -> dict:
    """`plm-jax evaluate` of a fine-tuned run, every kind alike: the latest, `step` or (`best`)
    the best checkpoint on a split; writes eval_[best_]step_N_SPLIT.json (and the kind's
    predictions beside it). `config`: the command's, checked already (or None)."""
    if split not in SPLITS:
      raise ConfigError(f"--split {split!r} is not one of {sorted(SPLITS)}")
    subdir = checkpoint.BEST_DIR if best else checkpoint.CHECKPOINT_DIR
    loaded = load_params(workdir, step, devices, config=config, subdir=subdir)
    report, write = self.evaluate_split(
        loaded, SPLITS[split], split,
        f"{split} of {workdir} @ step {loaded.step}{' (best)' if best else ''}")
    result = write_eval_result(workdir, loaded.step, split, best, report)
    if write is not None:
      write(workdir, eval_name(loaded.step, split, best))
    return result


def run_finetuning(kind: Kind, config, workdir: str, init_from: str | None = None,
                   devices=None) -> dict:
  """Fine-tunes (or resumes fine-tuning in `workdir`) as `kind` says; the best checkpoint by
  its metric is kept in best/ beside the latest; returns the final report."""
  devices = jax.devices() if devices is None else list(devices)
  found = workdirs.inspect(workdir)
  resume_step = distributed.agree(found.step)
  config, tokenizer = kind.start_config(config, workdir, init_from, found)
  checks.validate(config, len(devices))          # before any data is read
  data = kind.load(config, tokenizer, workdir, found)
  if found.config is None:
    require_checkpoint(config.finetune.init_from)
  finished = _finished(workdir, config, resume_step)
  if finished is not None:
    return finished
  metric = kind.metric(config, data)
  mesh = parallel.mesh_for(config, devices)
  trainer = Trainer.create(config, mesh, padded_vocab(config, tokenizer.vocab_size),
                           tokenizer.pad_id)
  predictor = kind.predictor(trainer)
  prepared = kind.prepared(data, tokenizer)
  eval_batches = loader.Batches(config, prepared, loader.EVAL, mesh=mesh)

  with Run(config, workdir, trainer, resume_step) as run:
    best = BestCheckpoint(run.extra_manager(checkpoint.BEST_DIR, keep=1), metric,
                          resuming=resume_step is not None)
    state, meta = run.start(lambda: kind.init(trainer, config, devices))
    run.accept(tokenizer)
    run.describe(kind.describe(config, data, metric))
    for line in kind.start_lines(data):
      console(line)
    train_step = run.compile()

    def on_eval(state, step):
      report = kind.report(predictor, state["params"], eval_batches, config, tokenizer, data)
      best.offer(state, step, report)
      run.writer.write(step, "eval", {k: v for k, v in report.items()
                                      if isinstance(v, (int, float))})
      console(f"eval @ step {step}: {format_metrics(report, trainer.objective.eval_keys)} | "
              f"best {metric} {best.value:.4f} @ step {best.step}")

    train_batches = loader.Batches(config, prepared, loader.TRAIN, mesh=mesh)
    state = run.loop(train_step, state, meta, run.batches(train_batches, meta), on_eval)
    if best.step != int(state["step"]):
      on_eval(state, int(state["step"]))
  run.summary(int(state["step"]))
  return kind.final(workdir, config, trainer, predictor, tokenizer, data, best.step, metric)


def _finished(workdir: str, config, resume_step: int | None) -> dict | None:
  """The final report of a run that is finished (its checkpoint at train.steps, its report
  written), said so; None when there is still something to do. Running it again would only
  record its last evaluation a second time."""
  path = os.path.join(workdir, REPORT_FILE)
  if resume_step is None or resume_step < config.train.steps:
    return None
  if not distributed.agree(int(os.path.exists(path))):
    return None
  console(f"nothing to do: {workdir} is finished (checkpoint at step {resume_step} >= "
          f"train.steps={config.train.steps}, its report in {path}); nothing was changed")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


# --- the config: a task's fields over the body's architecture -------------------------------------

def with_body_of(config, body_config):
  """The fine-tuning config with the architecture of `body_config` (a pretraining run's)."""
  if objectives.fine_tuned_head(body_config):
    raise CheckpointError(f"--init-from holds a fine-tuned {objectives.fine_tuned_head(body_config)}"
                          " already; start from the pretraining run (or import-hf workdir) it "
                          "was fine-tuned from")
  return _with_model_of(config, body_config)


def _with_model_of(config, source):
  """`config` with `source`'s model fields, except the runtime ones."""
  merged = copy.deepcopy(config)
  with merged.unlocked():
    model = copy.deepcopy(source.model)
    for field in RUNTIME_MODEL_FIELDS:
      model[field] = config.model[field]
    merged.model = model
  return merged


def start_config(config, workdir: str, init_from: str | None, found: workdirs.Found,
                 check_body: Callable = lambda config: None):
  """(config, tokenizer): the body's architecture and tokenizer, from --init-from for a new
  run or from the workdir for one that continues (which must be the same kind of fine-tuning,
  task and body). `check_body(config)` refuses a body the kind cannot fine-tune, before the
  body's files are read."""
  if found.config is not None:
    saved = found.config
    if "finetune" not in saved:
      raise CheckpointError(f"--workdir {workdir!r} holds a pretraining run; fine-tune into a "
                            "new --workdir (and give that run as --init-from)")
    before, now = saved.finetune, config.finetune
    if (saved.objective.name, before.task) != (config.objective.name, now.task):
      raise CheckpointError(f"--workdir {workdir!r} holds a fine-tuning run of the task "
                            f"{before.task!r} ({saved.objective.name}), not {now.task!r} "
                            f"({config.objective.name}); use a fresh --workdir")
    if found.step is None and init_from and os.path.abspath(init_from) != before.init_from:
      raise CheckpointError(f"--workdir {workdir!r} was started from --init-from "
                            f"{before.init_from}, not {os.path.abspath(init_from)}; use "
                            "that one (or a fresh --workdir)")
    config = _with_model_of(config, saved)
    init_from = before.init_from              # also a restart before the first checkpoint
    tokenizer = found.tokenizer
  else:
    if not init_from:
      raise ConfigError("--init-from is required to start fine-tuning: a pretraining workdir "
                        "(plm-jax train) or an imported Hugging Face model (plm-jax import-hf)")
    if not workdirs.has_config(init_from):
      raise ConfigError(f"--init-from {init_from!r} holds no plm-jax run (no "
                        f"{workdirs.CONFIG_FILE}); give a pretraining workdir (plm-jax train) "
                        "or an imported model (plm-jax import-hf)")
    config = with_body_of(config, workdirs.load_config(init_from))
    with config.unlocked():
      config.finetune.init_from = os.path.abspath(init_from)   # check_body names it
    check_body(config)
    tokenizer = TextTokenizer.load(init_from)
  with config.unlocked():
    config.finetune.init_from = os.path.abspath(init_from)
  return config, tokenizer


def require_checkpoint(init_from: str) -> None:
  """A fresh start needs a body to load. Checked after the config and the data (their mistakes
  are the more telling ones) and before anything is written to the new workdir."""
  if not checkpoint.complete_steps(init_from):
    raise CheckpointError(f"--init-from {init_from!r} holds no checkpoint yet (nothing in "
                          f"{checkpoint.checkpoint_dir(init_from)}); let its plm-jax train "
                          "save one (train.steps, checkpoint.every), or give another run")


def refuse_other_data(config, workdir: str, found: workdirs.Found) -> None:
  """A workdir that continues must hold a run of the same model and data."""
  if found.config is not None:
    diffs = workdirs.identity_mismatches(found.config, config)
    if diffs:
      raise CheckpointError(f"--workdir {workdir!r} holds a fine-tuning run of another model or "
                            f"data ({'; '.join(diffs)}); use a fresh --workdir")


def resolve_schedule(config, train_examples: int) -> None:
  """Epochs -> steps, warmup fraction -> warmup steps, eval once per epoch by default."""
  ft, t = config.finetune, config.train
  per_epoch = max(1, math.ceil(train_examples / t.batch_size))
  with config.unlocked():
    if ft.epochs > 0:
      t.steps = max(1, math.ceil(ft.epochs * train_examples / t.batch_size))
    if ft.warmup_fraction > 0:
      config.optim.warmup_steps = int(round(ft.warmup_fraction * t.steps))
    if t.eval_every <= 0:
      t.eval_every = per_epoch


# --- the start: the body restored, a new head ------------------------------------------------------

def body_and_new_head(trainer: Trainer, init_from: str, devices) -> dict:
  """A train state of the body of --init-from's latest checkpoint with a new head, and a new
  optimizer state (built once)."""
  body = load_params(init_from, devices=devices)
  params = trainer.init_params(trainer.config.train.seed)
  # The classifier keeps the pretraining model's names for its body ("encoder", or GPT-2's
  # "wte", "layers", ...): every one of them is restored; the head is new, and the pretraining
  # heads (MLM, NSP) have no place here.
  taken = [name for name in params if name not in HEAD_PARAMS and name in body.params]
  for name in taken:
    params[name] = body.params[name]
  console(f"initialised from {init_from} @ step {body.step}: {', '.join(taken)} restored; new "
          "head; pretraining heads dropped")
  return trainer.state_from_params(params)


class BestCheckpoint:
  """The parameters with the best validation metric so far, in best/ beside the latest."""

  def __init__(self, manager, metric: str, resuming: bool):
    self.manager, self.metric = manager, metric
    self.value, self.step = None, None
    if resuming and manager.latest_step() is not None:
      saved = checkpoint.read_meta(manager, manager.latest_step())["best"]
      self.value, self.step = saved["value"], saved["step"]
    elif not resuming:
      # A run that stopped before its first checkpoint starts again: its best is stale.
      for step in manager.all_steps():
        manager.delete(step)

  def offer(self, state: dict, step: int, report: dict) -> None:
    value = report[self.metric]
    better = self.value is None or (value > self.value if higher_is_better(self.metric)
                                    else value < self.value)
    if not better:
      return
    self.value, self.step = value, step
    # A resumed run replays the steps after its checkpoint: a best saved at or after this step
    # by the interrupted run is replaced (Orbax skips steps it already holds).
    for old in self.manager.all_steps():
      if old >= step:
        self.manager.delete(old)
    checkpoint.save(self.manager, step, {"params": state["params"]},
                    {"best": {"metric": self.metric, "value": value, "step": step},
                     "validation": report})
