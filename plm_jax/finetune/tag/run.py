"""`plm-jax finetune --config tag:TASK`: a pretrained body + a new token-classification head.

The run is a classification run's (plm_jax/finetune/run.py: the body restored from --init-from,
the best checkpoint by the task's metric beside the latest, resuming, the test report at the
end), with tags per word instead of a class per text. Workdir:
  config.json, tokenizer.json, checkpoints/, best/, metrics.jsonl   as for classification
  test_report.json        the best checkpoint on validation and test: word accuracy, entity
                          precision / recall / F1 and the same per entity type
  test_predictions.conll  "word<TAB>gold<TAB>predicted" per word, a blank line between
                          sentences (of the test split; of validation when there is none)
"""

import json
import os
import time

import jax
import numpy as np

from plm_jax import workdir as workdirs
from plm_jax.finetune.classify.data import EVAL, TEST, TRAIN, split_size
from plm_jax.finetune.predict import predicted_split, prepared_split
from plm_jax.finetune.run import Kind, refuse_other_data, resolve_schedule
from plm_jax.finetune.tag import data as tag_data
from plm_jax.finetune.tag.metrics import format_per_type, tag_report, token_cross_entropy
from plm_jax.run import checkpoint
from plm_jax.run.metrics_writer import console, format_metrics

PREDICTIONS_FILE = "test_predictions.conll"
UNTAGGED = "_"          # the gold column of a word without a tag


def load_data(config, tokenizer, workdir: str, found: workdirs.Found) -> tag_data.TagData:
  """The task's splits; sets the tags, the metric and the schedule in `config`."""
  t0 = time.time()
  data = tag_data.load(config, tokenizer)
  with config.unlocked():
    config.classify.num_classes = data.num_classes
    config.classify.label_names = data.label_names
    config.finetune.metric = data.metric
  refuse_other_data(config, workdir, found)
  resolve_schedule(config, split_size(data.splits[TRAIN]))
  sizes = {s: split_size(a) for s, a in data.splits.items()}
  console(f"data: {config.finetune.task} ({', '.join(data.descriptions.values())}): "
          + ", ".join(f"{n:,} {s}" for s, n in sizes.items())
          + f" sentences of {config.data.max_seq_length} tokens; {data.num_classes} tags; "
          "skipped " + ", ".join(f"{data.skipped[s]} {s}" for s in sizes)
          + "; truncated " + ", ".join(f"{data.truncated[s]} {s} ({data.cut_words[s]} words)"
                                       for s in sizes) + f"; {time.time() - t0:.1f}s")
  return data


def word_predictions(data: tag_data.TagData, split: str, pred: dict) -> list[np.ndarray]:
  """Per sentence (in split order) the predicted tag id of each word: the argmax at its first
  sub-token; a word cut by max_seq_length gets "O" (-1, always wrong, for tags without "O")."""
  fallback = data.label_names.index("O") if "O" in data.label_names else -1
  out = [None] * split_size(data.splits[split])
  best = pred["logits"].argmax(-1)
  for row, r in zip(best, pred["index"]):
    starts = data.starts[split][r]
    tags = np.full(len(starts), fallback, np.int32)
    tags[starts >= 0] = row[starts[starts >= 0]]
    out[r] = tags
  return out


def split_report(data: tag_data.TagData, split: str, pred: dict) -> tuple[dict, list]:
  """(the metrics of the split's tagged sentences, the predicted tag ids per sentence)."""
  predicted = word_predictions(data, split, pred)
  names = data.label_names
  out = {"examples": len(pred["index"])}
  tagged = [r for r, g in enumerate(data.gold[split]) if len(g) and g[0] >= 0]
  if not tagged:
    return out, predicted
  name = lambda i: names[i] if i >= 0 else UNTAGGED  # noqa: E731
  gold = [[names[i] for i in data.gold[split][r]] for r in tagged]
  guess = [[name(i) for i in predicted[r]] for r in tagged]
  out.update(tag_report(gold, guess, data.entity_scheme))
  if len(tagged) < out["examples"]:
    out["tagged_examples"] = len(tagged)
  out["loss"] = token_cross_entropy(pred["logits"], pred["labels"])
  out["cut_words"] = data.cut_words[split]
  return out, predicted


def write_predictions(path: str, data: tag_data.TagData, split: str, predicted: list) -> None:
  """word<TAB>gold<TAB>predicted per word; a blank line ends each sentence."""
  names = data.label_names
  with open(path, "w", encoding="utf-8") as f:
    for words, gold, guess in zip(data.words[split], data.gold[split], predicted):
      for w, g, p in zip(words, gold, guess):
        f.write(f"{w}\t{names[g] if g >= 0 else UNTAGGED}\t{names[p] if p >= 0 else 'O'}\n")
      f.write("\n")


def _report_split(data, split: str, pred: dict, label: str, keys) -> tuple[dict, list]:
  report, predicted = split_report(data, split, pred)
  console(f"{label}: " + (format_metrics(report, keys) if "accuracy" in report else
                          f"{report['examples']:,} sentences without tags: predictions only"))
  for line in format_per_type(report):
    console(line)
  return report, predicted


def test_report(workdir, config, trainer, predictor, data, best_step: int) -> dict:
  """The best checkpoint on the validation and test splits; writes test_report.json and the
  predictions (of test, else of validation) in CoNLL format."""
  with checkpoint.make_manager(workdir, read_only=True, subdir=checkpoint.BEST_DIR) as manager:
    params = checkpoint.restore(manager, best_step, trainer.abstract_state,
                                trainer.state_shardings, params_only=True)["params"]
  keys = trainer.objective.eval_keys
  report = {"workdir": os.path.abspath(workdir), "task": config.finetune.task,
            "best_step": best_step, "metric": data.metric}
  written = None
  for split in (EVAL, TEST):
    if split not in data.splits or split_size(data.splits[split]) == 0:
      continue
    name = "validation" if split == EVAL else "test"
    pred = predictor.split(params, config, data, split)
    report[name], predicted = _report_split(
        data, split, pred, f"{name} ({data.descriptions[split]}) @ best step {best_step}", keys)
    written = (split, predicted)
  if jax.process_index() == 0:
    write_predictions(os.path.join(workdir, PREDICTIONS_FILE), data, *written)
    with open(os.path.join(workdir, "test_report.json"), "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)
  return report


def evaluate_split(loaded, split: str, name: str, label: str) -> tuple[dict, None]:
  """Every metric of a restored tagger on a split (Kind.evaluate)."""
  data, pred = predicted_split(loaded, tag_data.load, split, name)
  report, _ = _report_split(data, split, pred, label, loaded.trainer.objective.eval_keys)
  return report, None


class Tagging(Kind):
  """Token tagging: a tag per word (its first sub-token), entities scored as spans."""

  name = "tag"

  def load(self, config, tokenizer, workdir, found):
    return load_data(config, tokenizer, workdir, found)

  def metric(self, config, data) -> str:
    return data.metric

  def prepared(self, data, tokenizer):
    return prepared_split(data, EVAL)

  def describe(self, config, data, metric: str) -> str:
    return (f"{config.model.family} {config.model.size} tagger with {data.num_classes} tags; "
            f"{config.train.steps} steps ({config.finetune.epochs:g} epochs), best by "
            f"{'entity f1' if metric == 'f1' else 'word accuracy'}")

  def start_lines(self, data) -> tuple[str, ...]:
    return ("tags: " + ", ".join(f"{i} = {n}" for i, n in enumerate(data.label_names)),)

  def report(self, predictor, params, batches, config, tokenizer, data) -> dict:
    return split_report(data, EVAL, predictor(params, batches))[0]

  def final(self, workdir, config, trainer, predictor, tokenizer, data, best_step, metric):
    return test_report(workdir, config, trainer, predictor, data, best_step)

  def evaluate_split(self, loaded, split, name, label):
    return evaluate_split(loaded, split, name, label)


TAGGING = Tagging()
