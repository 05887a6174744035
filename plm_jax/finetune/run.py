"""`plm-jax finetune`: a pretrained body + a new classification head, trained on a task; the best
checkpoint by the task's metric is kept beside the latest, and the end is a test-split report.

Workdir of a fine-tuning run:
  config.json, tokenizer.json     as for pretraining (model fields copied from --init-from)
  checkpoints/<step>/             the latest checkpoints (params, optimizer state), for resuming
  best/<step>/                    the parameters with the best validation metric so far
  metrics.jsonl, tensorboard/     train and validation metrics
  test_report.json                metrics on the test split (when it is labelled) of the best
  test_predictions.tsv            "index<TAB>prediction" per test record (GLUE's format)
"""

import copy
import csv
import json
import math
import os
import time

import jax
import numpy as np
from flax import nnx

from plm_jax import checkpoint, distributed, parallel
from plm_jax.data import loader
from plm_jax.data.pipeline import PreparedData
from plm_jax.data.tokenizer import TextTokenizer
from plm_jax.errors import CheckpointError, ConfigError, DataError
from plm_jax.finetune import data as cdata
from plm_jax.finetune.metrics import higher_is_better, split_metrics
from plm_jax.finetune.tasks import task_of
from plm_jax.metrics_writer import MetricsWriter, console, format_metrics
from plm_jax.models.partitioning import axis_rules

# Model fields a fine-tuning config sets itself; every other model field (the architecture)
# comes from the run it starts from.
RUNTIME_MODEL_FIELDS = ("dropout_rate", "attention_dropout_rate", "attention_impl", "dtype",
                        "remat")
TRAIN_KEYS = ("loss", "accuracy", "mse", "learning_rate")
EVAL_KEYS = ("loss", "accuracy", "f1", "macro_f1", "mcc", "pearson", "spearman", "mse")


def with_body_of(config, body_config):
  """The fine-tuning config with the architecture of `body_config` (a pretraining run's)."""
  if body_config.objective.name == "classify":
    raise CheckpointError("--init-from holds a fine-tuned classifier already; start from the "
                          "pretraining run (or import-hf workdir) it was fine-tuned from")
  return _with_model_of(config, body_config)


def _with_model_of(config, source):
  """`config` with `source`'s model fields, except the runtime ones."""
  body_config = source
  merged = copy.deepcopy(config)
  with merged.unlocked():
    model = copy.deepcopy(body_config.model)
    for field in RUNTIME_MODEL_FIELDS:
      model[field] = config.model[field]
    merged.model = model
  return merged


def resolve_schedule(config, train_examples: int) -> None:
  """Epochs -> steps, warmup fraction -> warmup steps, eval once per epoch by default."""
  k, t = config.classify, config.train
  per_epoch = max(1, math.ceil(train_examples / t.batch_size))
  with config.unlocked():
    if k.epochs > 0:
      t.steps = max(1, math.ceil(k.epochs * train_examples / t.batch_size))
    if k.warmup_fraction > 0:
      config.optim.warmup_steps = int(round(k.warmup_fraction * t.steps))
    if t.eval_every <= 0:
      t.eval_every = per_epoch


def _prepared(data: cdata.ClassifyData, eval_split: str) -> PreparedData:
  """The loader's view: the train split and one split served as "eval"."""
  return PreparedData(data.tokenizer, "classify", [data.splits[cdata.TRAIN]], [1.0],
                      data.splits[eval_split], None, [])


class Predictor:
  """Runs the classifier over a whole split; gathers logits, labels and record indices."""

  def __init__(self, trainer):
    graphdef, rules, mesh = trainer.graphdef, parallel.rules_dict(trainer.config), trainer.mesh

    def step(params, batch):
      with axis_rules(rules, mesh):
        model = nnx.merge(graphdef, params)
        logits = model(batch["input_ids"], batch["segment_ids"], batch["attention_mask"])
        return (logits["logits"], batch["labels"], batch["example_weights"],
                batch["example_index"])

    self.trainer = trainer
    self.step = jax.jit(step, in_shardings=(trainer.state_shardings["params"],
                                            trainer.batch_shardings),
                        out_shardings=parallel.replicated(mesh))

  def __call__(self, params, batches: loader.Batches) -> dict[str, np.ndarray]:
    parts = []
    for i in range(batches.eval_steps(0)):          # the whole split, once
      out = self.step(params, loader.to_global(batches.batch(i), self.trainer.batch_shardings))
      parts.append(jax.device_get(out))
    if not parts:
      raise DataError("the split holds no examples to evaluate")
    logits, labels, weights, index = (np.concatenate(p) for p in zip(*parts))
    keep = weights > 0
    order = np.argsort(index[keep], kind="stable")
    return {"logits": logits[keep][order], "labels": labels[keep][order],
            "index": index[keep][order]}


def split_report(pred: dict, regression: bool, labeled: bool) -> dict:
  """Every metric of the split's labelled records (and their loss), or only the count when it
  has no labels (GLUE's test sets)."""
  out = {"examples": int(len(pred["index"]))}
  mask = cdata.is_labeled(pred["labels"])
  if not labeled or not mask.any():
    return out
  if not mask.all():
    out["labeled_examples"] = int(mask.sum())
  logits, labels = pred["logits"][mask], pred["labels"][mask]
  out.update(split_metrics(labels, logits, regression))
  if regression:
    out["loss"] = out["mse"]
  else:
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    out["loss"] = float(-np.mean(log_probs[np.arange(len(labels)), labels.astype(np.int64)]))
  return out


def finetune(config, workdir: str, init_from: str | None = None, devices=None) -> dict:
  """Fine-tunes (or resumes fine-tuning in `workdir`); returns the final report."""
  devices = jax.devices() if devices is None else list(devices)
  resume_step = distributed.agree(checkpoint.latest_step(workdir))
  saved_path = os.path.join(workdir, checkpoint.CONFIG_FILE)
  if os.path.exists(saved_path):
    saved = checkpoint.load_config(workdir)
    if saved.objective.name != "classify":
      raise CheckpointError(f"--workdir {workdir!r} holds a pretraining run; fine-tune into a "
                            "new --workdir (and give that run as --init-from)")
    if saved.classify.task != config.classify.task:
      raise CheckpointError(f"--workdir {workdir!r} holds a fine-tuning run of the task "
                            f"{saved.classify.task!r}, not {config.classify.task!r}; use a fresh "
                            "--workdir")
    config = _with_model_of(config, saved)
    if resume_step is None and init_from and \
        os.path.abspath(init_from) != saved.classify.init_from:
      raise CheckpointError(f"--workdir {workdir!r} was started from --init-from "
                            f"{saved.classify.init_from}, not {os.path.abspath(init_from)}; use "
                            "that one (or a fresh --workdir)")
    init_from = saved.classify.init_from      # a restart before the first checkpoint
    with config.unlocked():
      config.classify.init_from = saved.classify.init_from
    tokenizer = TextTokenizer.load(workdir)
  elif resume_step is not None:
    raise CheckpointError(f"--workdir {workdir!r} has checkpoints but no config.json; use a "
                          "fresh --workdir")
  else:
    if not init_from:
      raise ConfigError("--init-from is required to start fine-tuning: a pretraining workdir "
                        "(plm-jax train) or an imported Hugging Face model (plm-jax import-hf)")
    config = with_body_of(config, checkpoint.load_config(init_from))
    tokenizer = TextTokenizer.load(init_from)
    with config.unlocked():
      config.classify.init_from = os.path.abspath(init_from)
  # Bad fields and a mesh that does not fit fail before any data is read.
  parallel.validate(config, len(devices))
  task = task_of(config)
  t0 = time.time()
  data = cdata.load(config, tokenizer)
  with config.unlocked():
    config.classify.num_classes = data.num_classes
    config.classify.label_names = data.label_names
  if os.path.exists(saved_path):
    diffs = checkpoint.identity_mismatches(saved, config)
    if diffs:
      raise CheckpointError(f"--workdir {workdir!r} holds a fine-tuning run of another model or "
                            f"data ({'; '.join(diffs)}); use a fresh --workdir")
  n_train = cdata.split_size(data.splits[cdata.TRAIN])
  resolve_schedule(config, n_train)
  sizes = {s: cdata.split_size(a) for s, a in data.splits.items()}
  console(f"data: {config.classify.task} ({', '.join(data.descriptions.values())}): "
          + ", ".join(f"{n:,} {s}" for s, n in sizes.items())
          + f" examples of {config.data.max_seq_length} tokens; "
          f"{data.num_classes if data.num_classes > 1 else 'regression'}"
          f"{' classes' if data.num_classes > 1 else ''}; skipped "
          + ", ".join(f"{data.skipped[s]} {s}" for s in sizes) + "; truncated "
          + ", ".join(f"{data.truncated[s]} {s}" for s in sizes) + f"; {time.time() - t0:.1f}s")

  from plm_jax.train import Trainer, padded_vocab, run_loop   # local: avoids an import cycle
  mesh = parallel.mesh_for(config, devices)
  trainer = Trainer.create(config, mesh, padded_vocab(config, tokenizer.vocab_size),
                           tokenizer.pad_id)
  manager = checkpoint.make_manager(workdir, keep=config.checkpoint.keep,
                                    async_save=config.checkpoint.async_save)
  best_manager = checkpoint.make_manager(workdir, keep=1, async_save=False,
                                         subdir=checkpoint.BEST_DIR)
  best = {"metric": task.metric, "value": None, "step": None}
  meta: dict = {}
  try:
    if resume_step is not None:
      state, meta = trainer.restore_state(manager, resume_step)
      if best_manager.latest_step() is not None:
        best.update(checkpoint.read_meta(best_manager, best_manager.latest_step())["best"])
      console(f"resumed from step {resume_step} in {checkpoint.checkpoint_dir(workdir)}")
    else:
      # A run that stopped before its first checkpoint starts again: its best is stale.
      for step in best_manager.all_steps():
        best_manager.delete(step)
      state = _init_from_body(trainer, config, init_from, devices)
  except BaseException:
    manager.close()
    best_manager.close()
    raise
  checkpoint.save_config(workdir, config)
  if jax.process_index() == 0:
    tokenizer.save(workdir)

  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trainer.abstract_state["params"]))
  console(f"model: {config.model.family} {config.model.size} classifier, "
          f"{n_params / 1e6:.2f}M parameters, {data.num_classes} output(s); mesh "
          f"{dict(mesh.shape)}; {config.train.steps} steps "
          f"({config.classify.epochs:g} epochs of {n_train:,}), best by {task.metric}")
  train_step = trainer.compile_train_step()
  predictor = Predictor(trainer)
  regression = data.num_classes == 1
  eval_batches = loader.Batches(config, _prepared(data, cdata.EVAL), loader.EVAL, mesh=mesh)
  writer = MetricsWriter(workdir)

  def on_eval(state, step):
    report = split_report(predictor(state["params"], eval_batches), regression, True)
    value = report[task.metric]
    better = best["value"] is None or (value > best["value"] if higher_is_better(task.metric)
                                       else value < best["value"])
    if better:
      best.update(value=value, step=step)
      # A resumed run replays the steps after its checkpoint: a best saved at or after this
      # step by the interrupted run is replaced (Orbax skips steps it already holds).
      for old in best_manager.all_steps():
        if old >= step:
          best_manager.delete(old)
      checkpoint.save(best_manager, step, {"params": state["params"]},
                      {"best": dict(best), "validation": report})
    writer.write(step, "eval", report)
    console(f"eval @ step {step}: {format_metrics(report, EVAL_KEYS)} | best {task.metric} "
            f"{best['value']:.4f} @ step {best['step']}")

  batches = loader.Batches(config, _prepared(data, cdata.EVAL), loader.TRAIN,
                           mesh=mesh).iterator(
      meta.get("data_iterator") or {"next_index": int(state["step"])})
  try:
    state = run_loop(config, trainer, train_step, state, int(meta.get("tokens_seen", 0)),
                     batches, manager, writer, on_eval, train_keys=TRAIN_KEYS)
    if best["step"] != int(state["step"]):
      on_eval(state, int(state["step"]))
  finally:
    batches.close()
    manager.wait_until_finished()
    manager.close()
    best_manager.wait_until_finished()
    best_manager.close()
    writer.close()
  return test_report(workdir, config, trainer, predictor, data, best)


def _init_from_body(trainer, config, init_from, devices) -> dict:
  """A fresh head on the body of --init-from's latest checkpoint, and a new optimizer state."""
  from plm_jax.inference import load_model   # local: inference imports train
  body = load_model(init_from, devices=devices)
  body_params = nnx.to_pure_dict(nnx.state(body.model, nnx.Param))
  # Fresh parameters for all (the head needs them), then the body's replace their part.
  params = trainer.init_state(config.train.seed)["params"]
  taken = []
  for name in params:
    source = body_params.get(name) if config.model.family == "gpt" else (
        body_params.get("encoder") if name == "encoder" else None)
    if source is not None:
      params[name] = source
      taken.append(name)
  del body
  console(f"initialised from {init_from} @ step {checkpoint.latest_step(init_from)}: "
          f"{', '.join(taken)} restored; new head; pretraining heads dropped")
  return trainer.state_from_params(params)


def test_report(workdir, config, trainer, predictor, data, best) -> dict:
  """The best checkpoint on the validation and test splits; writes test_report.json and the
  test predictions."""
  with checkpoint.make_manager(workdir, read_only=True, subdir=checkpoint.BEST_DIR) as manager:
    params = checkpoint.restore(manager, best["step"], trainer.abstract_state,
                                trainer.state_shardings, params_only=True)["params"]
  regression = data.num_classes == 1
  report = {"workdir": os.path.abspath(workdir), "task": config.classify.task,
            "best_step": best["step"], "metric": best["metric"]}
  for split in (cdata.EVAL, cdata.TEST):
    if split not in data.splits or cdata.split_size(data.splits[split]) == 0:
      continue
    batches = loader.Batches(config, _prepared(data, split), loader.EVAL, mesh=trainer.mesh)
    pred = predictor(params, batches)
    name = "validation" if split == cdata.EVAL else "test"
    report[name] = split_report(pred, regression, data.labeled[split])
    console(f"{name} ({data.descriptions[split]}) @ best step {best['step']}: "
            + (format_metrics(report[name], EVAL_KEYS) if data.labeled[split] else
               f"{report[name]['examples']:,} examples without labels: predictions only"))
    if split == cdata.TEST and jax.process_index() == 0:
      write_predictions(os.path.join(workdir, "test_predictions.tsv"), pred, regression,
                        data.label_names if task_of(config).submit_names else (),
                        data.record_ids[split])
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "test_report.json"), "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)
  return report


def write_predictions(path: str, pred: dict, regression: bool, names: tuple[str, ...],
                      record_ids: np.ndarray) -> None:
  """`index<TAB>prediction` per record, in record order: the index is the record's id (GLUE's
  `idx`, or its row in the file), the prediction a class name, a class id, or a score."""
  rows = sorted(zip(record_ids[pred["index"]], pred["logits"]), key=lambda r: r[0])
  with open(path, "w", encoding="utf-8", newline="") as f:
    out = csv.writer(f, delimiter="\t", lineterminator="\n")
    out.writerow(["index", "prediction"])
    for record_id, logits in rows:
      if regression:
        out.writerow([int(record_id), f"{float(logits[0]):.6f}"])
      else:
        c = int(np.argmax(logits))
        out.writerow([int(record_id), names[c] if c < len(names) and names[c] else c])


def evaluate_classifier(workdir: str, step: int | None = None, best: bool = False,
                        split: str = "validation", devices=None, config=None) -> dict:
  """Every metric of a fine-tuned checkpoint (the latest, `step`, or the best) on a split."""
  from plm_jax.inference import load_model   # local: inference imports train
  subdir = checkpoint.BEST_DIR if best else checkpoint.CHECKPOINT_DIR
  restored = load_model(workdir, step, devices, config=config, subdir=subdir)
  which = {"validation": cdata.EVAL, "test": cdata.TEST, "train": cdata.TRAIN}
  if split not in which:
    raise ConfigError(f"--split {split!r} is not one of {sorted(which)}")
  data = cdata.load(restored.config, restored.tokenizer)
  if which[split] not in data.splits:
    raise ConfigError(f"the task {restored.config.classify.task!r} has no {split} split here")
  predictor = Predictor(restored.trainer)
  params = nnx.to_pure_dict(nnx.state(restored.model, nnx.Param))
  pred = predictor(params, loader.Batches(restored.config, _prepared(data, which[split]),
                                          loader.EVAL, mesh=restored.trainer.mesh))
  report = split_report(pred, data.num_classes == 1, data.labeled[which[split]])
  console(f"{split} of {workdir} @ step {restored.step}{' (best)' if best else ''}: "
          + format_metrics(report, EVAL_KEYS))
  result = {"step": restored.step, "workdir": os.path.abspath(workdir), "split": split,
            "best": best, **report}
  if jax.process_index() == 0:
    name = f"eval_{'best_' if best else ''}step_{restored.step}_{split}.json"
    with open(os.path.join(workdir, name), "w", encoding="utf-8") as f:
      json.dump(result, f, indent=2)
  return result
