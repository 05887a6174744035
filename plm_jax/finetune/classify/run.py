"""`plm-jax finetune --config classify:TASK`: a pretrained body + a new classification head (or
a regression head: one output), trained on a task (plm_jax/finetune/run.py runs it); `plm-jax
evaluate` of a classifier."""

import time

from plm_jax import workdir as workdirs
from plm_jax.finetune.classify import data as cdata
from plm_jax.finetune.classify.tasks import task_of
from plm_jax.finetune.predict import (classification_metric, predicted_split, prepared_split,
                                      split_report, test_report)
from plm_jax.finetune.run import Downstream, Kind, refuse_other_data, resolve_schedule
from plm_jax.run.metrics_writer import console, format_metrics


def load_task_data(config, tokenizer, workdir: str, found: workdirs.Found) -> cdata.ClassifyData:
  """The task's splits; sets the classes and the schedule (epochs -> steps) in `config`."""
  t0 = time.time()
  data = cdata.load(config, tokenizer)
  with config.unlocked():
    config.classify.num_classes = data.num_classes
    config.classify.label_names = data.label_names
  refuse_other_data(config, workdir, found)
  resolve_schedule(config, cdata.split_size(data.splits[cdata.TRAIN]))
  sizes = {s: cdata.split_size(a) for s, a in data.splits.items()}
  classes = f"{data.num_classes} classes" if data.num_classes > 1 else "regression"
  console(f"data: {config.finetune.task} ({', '.join(data.descriptions.values())}): "
          + ", ".join(f"{n:,} {s}" for s, n in sizes.items())
          + f" examples of {config.data.max_seq_length} tokens; {classes}; skipped "
          + ", ".join(f"{data.skipped[s]} {s}" for s in sizes) + "; truncated "
          + ", ".join(f"{data.truncated[s]} {s}" for s in sizes) + f"; {time.time() - t0:.1f}s")
  return data


def evaluate_split(loaded, split: str, name: str, label: str) -> tuple[dict, None]:
  """Every metric of a restored classifier on a split (Kind.evaluate)."""
  data, pred = predicted_split(loaded, cdata.load, split, name)
  report = split_report(pred, data.num_classes == 1, data.labeled[split])
  console(f"{label}: " + format_metrics(report, loaded.trainer.objective.eval_keys))
  return report, None


def _labels_line(data) -> tuple[str, ...]:
  if data.num_classes <= 1:
    return ()
  return ("labels: " + ", ".join(f"{i} = {name or i}" for i, name in enumerate(
      data.label_names or [""] * data.num_classes)),)


class Classification(Kind):
  """Sequence classification (a regression with one output): a class per text or text pair."""

  name = "classify"

  def load(self, config, tokenizer, workdir, found):
    return load_task_data(config, tokenizer, workdir, found)

  def metric(self, config, data) -> str:
    return task_of(config).metric

  def prepared(self, data, tokenizer):
    return prepared_split(data, cdata.EVAL)

  def describe(self, config, data, metric: str) -> str:
    return (f"{config.model.family} {config.model.size} classifier with {data.num_classes} "
            f"output(s); {config.train.steps} steps ({config.finetune.epochs:g} epochs), best "
            f"by {metric}")

  def start_lines(self, data) -> tuple[str, ...]:
    return _labels_line(data)

  def report(self, predictor, params, batches, config, tokenizer, data) -> dict:
    return split_report(predictor(params, batches), data.num_classes == 1, True)

  def final(self, workdir, config, trainer, predictor, tokenizer, data, best_step, metric):
    return test_report(workdir, config, trainer, predictor, data, best_step, metric)

  def evaluate_split(self, loaded, split, name, label):
    return evaluate_split(loaded, split, name, label)

  def resampled_metric(self, records, indices, metric):
    return classification_metric(records, indices, metric)

  def compare_stage(self) -> Downstream:
    return Downstream(
        "classify", "classification", "classify", {"word_order": "jsonl"}, self.finetune,
        lambda family: True, lambda config: config.finetune.metric or task_of(config).metric,
        (), scale=100.0, formats=((".csv", "csv"), (".tsv", "csv"), (".jsonl", "jsonl")),
        own_fields=("text_field", "text_pair_field", "label_field"),
        records=self.example_records, resampled=self.resampled_metric)


CLASSIFICATION = Classification()
