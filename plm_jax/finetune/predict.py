"""A fine-tuned model's predictions over whole splits (`Predictor`, shared by the kinds that
predict logits), a classifier's metrics and test report, and the files `plm-jax evaluate`
writes for every kind."""

import csv
import json
import os

import jax
import numpy as np
from flax import nnx

from plm_jax import parallel
from plm_jax.data import loader
from plm_jax.data.pipeline import PreparedData
from plm_jax.errors import ConfigError, DataError
from plm_jax.finetune.classify import data as cdata
from plm_jax.finetune.classify.metrics import format_per_class, per_class_report, split_metrics
from plm_jax.finetune.classify.tasks import task_of
from plm_jax.models.partitioning import axis_rules
from plm_jax.run import checkpoint
from plm_jax.run.metrics_writer import console, format_metrics

SPLITS = {"validation": cdata.EVAL, "test": cdata.TEST, "train": cdata.TRAIN}


def prepared_split(data: cdata.ClassifyData, eval_split: str) -> PreparedData:
  """The loader's view: the train split and one split served as "eval"."""
  return PreparedData(data.tokenizer, "classify", [data.splits[cdata.TRAIN]], [1.0],
                      data.splits[eval_split], None, [])


class Predictor:
  """Runs a fine-tuned model over a whole split; gathers the model's `outputs` (a classifier's
  or a tagger's logits; a span model's start and end logits), the batches' `carried` fields
  (the labels) and the record indices, in record order."""

  def __init__(self, trainer, outputs: tuple[str, ...] = ("logits",),
               carried: tuple[str, ...] = ("labels",)):
    graphdef, rules, mesh = trainer.graphdef, parallel.rules_dict(trainer.config), trainer.mesh

    def step(params, batch):
      with axis_rules(rules, mesh):
        out = nnx.merge(graphdef, params)(batch["input_ids"], batch["segment_ids"],
                                          batch["attention_mask"])
        return ({k: out[k] for k in outputs}, {k: batch[k] for k in carried},
                batch["example_weights"], batch["example_index"])

    self.trainer, self.fields = trainer, outputs + carried
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
    weights, index = (np.concatenate([p[i] for p in parts]) for i in (2, 3))
    keep = weights > 0
    order = np.argsort(index[keep], kind="stable")
    fields = {k: np.concatenate([{**p[0], **p[1]}[k] for p in parts]) for k in self.fields}
    return {**{k: v[keep][order] for k, v in fields.items()}, "index": index[keep][order]}

  def split(self, params, config, data: cdata.ClassifyData, split: str) -> dict:
    return self(params, loader.Batches(config, prepared_split(data, split), loader.EVAL,
                                       mesh=self.trainer.mesh))


def predicted_split(loaded, load, split: str, name: str, predictor=Predictor) -> tuple:
  """(data, predictions) of a restored model (`loaded`) on a split, for `plm-jax evaluate`:
  `load(config, tokenizer)` reads the kind's data, `predictor` runs the model over it."""
  data = load(loaded.config, loaded.tokenizer)
  if split not in data.splits:
    raise ConfigError(f"the task {loaded.config.finetune.task!r} has no {name} split here")
  return data, predictor(loaded.trainer).split(loaded.params, loaded.config, data, split)


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


def examples_path(workdir: str, split: str) -> str:
  """The per-example records of a split's final report ("validation" | "test"), for compare's
  paired bootstrap (Kind.example_records): {field: [value per example]}, in example order."""
  return os.path.join(workdir, f"{split}_examples.json")


def write_examples(workdir: str, split: str, records: dict) -> None:
  if jax.process_index() == 0:
    with open(examples_path(workdir, split), "w", encoding="utf-8") as f:
      json.dump(records, f)


def read_examples(workdir: str, split: str) -> dict | None:
  path = examples_path(workdir, split)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def classification_records(pred: dict) -> dict:
  """The labelled examples' labels and outputs (any classification metric is recomputed from
  them, on any resample)."""
  mask = cdata.is_labeled(pred["labels"])
  return {"labels": pred["labels"][mask].tolist(), "logits": pred["logits"][mask].tolist()}


def classification_metric(records: dict, indices, metric: str) -> float:
  """`metric` of the resampled examples `indices` of classification_records (one output: a
  regression)."""
  logits = np.asarray(records["logits"], np.float32)[indices]
  labels = np.asarray(records["labels"])[indices]
  return float(split_metrics(labels, logits, logits.shape[-1] == 1)[metric])


def test_report(workdir, config, trainer, predictor, data, best_step: int, metric: str) -> dict:
  """The best checkpoint on the validation and test splits; writes test_report.json and the
  test predictions."""
  with checkpoint.make_manager(workdir, read_only=True, subdir=checkpoint.BEST_DIR) as manager:
    params = checkpoint.restore(manager, best_step, trainer.abstract_state,
                                trainer.state_shardings, params_only=True)["params"]
  regression = data.num_classes == 1
  keys = trainer.objective.eval_keys
  report = {"workdir": os.path.abspath(workdir), "task": config.finetune.task,
            "best_step": best_step, "metric": metric}
  for split in (cdata.EVAL, cdata.TEST):
    if split not in data.splits or cdata.split_size(data.splits[split]) == 0:
      continue
    pred = predictor.split(params, config, data, split)
    name = "validation" if split == cdata.EVAL else "test"
    report[name] = split_report(pred, regression, data.labeled[split])
    console(f"{name} ({data.descriptions[split]}) @ best step {best_step}: "
            + (format_metrics(report[name], keys) if data.labeled[split] else
               f"{report[name]['examples']:,} examples without labels: predictions only"))
    labeled = cdata.is_labeled(pred["labels"])
    if data.labeled[split] and labeled.any():
      write_examples(workdir, name, classification_records(pred))
    if not regression and data.labeled[split] and labeled.any():
      classes = per_class_report(pred["labels"][labeled], pred["logits"][labeled],
                                 tuple(data.label_names))
      report[name].update(classes)
      for line in format_per_class(classes):
        console(line)
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


def eval_name(step: int, split: str, best: bool) -> str:
  """The stem of `evaluate`'s files for a fine-tuned run: eval_[best_]step_N_SPLIT."""
  return f"eval_{'best_' if best else ''}step_{step}_{split}"


def write_eval_result(workdir: str, step: int, split: str, best: bool, report: dict) -> dict:
  """`evaluate`'s result for a fine-tuned run, written to WORKDIR/eval_[best_]step_N_SPLIT.json
  (by process 0) and returned; every kind of fine-tuning writes it the same way."""
  result = {"step": step, "workdir": os.path.abspath(workdir), "split": split, "best": best,
            **report}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, eval_name(step, split, best) + ".json"), "w",
              encoding="utf-8") as f:
      json.dump(result, f, indent=2)
  return result
