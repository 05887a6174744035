"""`plm-jax finetune --config qa:TASK`: a pretrained body + a start / end head trained for
extractive question answering; the best checkpoint by F1 (or exact match) is kept beside the
latest, as for classification (plm_jax/finetune/run.py, whose machinery this reuses).

Workdir of a question-answering run (as a classifier's, plus):
  test_report.json                 SQuAD's metrics of the best checkpoint on the validation (and
                                   test) split
  validation_predictions.json      {question id: answer text} of the best checkpoint, the file
  test_predictions.json            SQuAD's evaluation script takes ("" = no answer)
  validation_null_odds.json        unanswerable tasks: {id: null score - best span score}, the
                                   script's na_prob file (its best-threshold sweep)
"""

import json
import os
import time

import jax
import numpy as np

from plm_jax import workdir as workdirs
from plm_jax.finetune.predict import Predictor, predicted_split, prepared_split, write_examples
from plm_jax.finetune.qa import data as qa_data
from plm_jax.finetune.qa.metrics import best_thresholds, raw_scores, squad_metrics
from plm_jax.finetune.run import Downstream, Kind, refuse_other_data, resolve_schedule
from plm_jax.run import checkpoint
from plm_jax.run.metrics_writer import console, format_metrics



def load_qa_data(config, tokenizer, workdir: str, found: workdirs.Found) -> qa_data.QAData:
  """The task's windows; sets the schedule (epochs -> steps, counted in train windows)."""
  t0 = time.time()
  data = qa_data.load(config, tokenizer)
  refuse_other_data(config, workdir, found)
  resolve_schedule(config, len(data.splits[qa_data.TRAIN]["input_ids"]))
  parts = [f"{len(data.examples[s]):,} {s} questions in {len(a['input_ids']):,} windows"
           for s, a in data.splits.items()]
  cut = sum(w.cut_questions for w in data.windows.values())
  console(f"data: {config.finetune.task} ({', '.join(data.descriptions.values())}): "
          + ", ".join(parts) + f" of {config.data.max_seq_length} tokens"
          + f"{' (with unanswerable questions)' if data.task.unanswerable else ''}; skipped "
          + ", ".join(f"{data.skipped[s]} {s}" for s in data.splits)
          + f"; {cut} questions cut to {config.qa.max_query_length} tokens; "
          f"{time.time() - t0:.1f}s")
  return data


class SpanPredictor(Predictor):
  """The span model over a whole split: start and end logits of every window, in order."""

  def __init__(self, trainer):
    super().__init__(trainer, outputs=("start_logits", "end_logits"), carried=())


def split_answers(config, data: qa_data.QAData, split: str, logits: dict) -> tuple[dict, dict]:
  """(metrics, answers): SQuAD's metrics of the split's questions (only their count when it has
  no answers), and {"predictions", "null_diffs"} by question id."""
  q, v2 = config.qa, data.task.unanswerable
  examples = data.examples[split]
  predictions, _, diffs = qa_data.best_answers(
      examples, data.windows[split], logits["start_logits"], logits["end_logits"], q.n_best,
      q.max_answer_length, v2, q.null_score_diff_threshold)
  report = {"examples": len(examples)}
  if data.labeled[split]:
    golds = {e.id: e.answers for e in examples}
    report.update(squad_metrics(golds, predictions, v2))
    if v2:
      # swept over the answers written ("" where the null won), as the official script run on
      # the written predictions and null odds sweeps them
      report.update(best_thresholds(golds, predictions, diffs))
  return report, {"predictions": predictions, "null_diffs": diffs}


def qa_test_report(workdir, config, trainer, predictor, data, best_step: int,
                   metric: str) -> dict:
  """The best checkpoint on the validation and test splits; writes test_report.json and the
  predictions files."""
  with checkpoint.make_manager(workdir, read_only=True, subdir=checkpoint.BEST_DIR) as manager:
    params = checkpoint.restore(manager, best_step, trainer.abstract_state,
                                trainer.state_shardings, params_only=True)["params"]
  report = {"workdir": os.path.abspath(workdir), "task": config.finetune.task,
            "best_step": best_step, "metric": metric}
  for split, name in ((qa_data.EVAL, "validation"), (qa_data.TEST, "test")):
    if split not in data.splits:
      continue
    report[name], answers = split_answers(config, data, split,
                                          predictor.split(params, config, data, split))
    console(f"{name} ({data.descriptions[split]}) @ best step {best_step}: "
            + (format_metrics(report[name], trainer.objective.eval_keys) if data.labeled[split]
               else f"{report[name]['examples']:,} questions without answers: predictions only"))
    write_answers(workdir, name, answers, data.task.unanswerable)
    if data.labeled[split]:
      write_examples(workdir, name, question_scores(data, split, answers["predictions"]))
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "test_report.json"), "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)
  return report


def question_scores(data: qa_data.QAData, split: str, predictions: dict) -> dict:
  """SQuAD's exact match and F1 of each question, in percent (the split's are their means)."""
  golds = {e.id: e.answers for e in data.examples[split]}
  exact, f1 = raw_scores(golds, predictions, data.task.unanswerable)
  return {"exact_match": [100.0 * exact[q] for q in golds], "f1": [100.0 * f1[q] for q in golds]}


def write_answers(workdir: str, name: str, answers: dict, unanswerable: bool) -> None:
  """{id: answer} as the SQuAD evaluation script takes it; with unanswerable questions also the
  null-score differences (its --na-prob-file)."""
  if jax.process_index() != 0:
    return
  with open(os.path.join(workdir, f"{name}_predictions.json"), "w", encoding="utf-8") as f:
    json.dump(answers["predictions"], f, indent=1, ensure_ascii=False)
  if unanswerable:
    # a question without any valid span scores +inf: certainly unanswerable (JSON has no inf)
    odds = {k: float(min(v, 1e9)) for k, v in answers["null_diffs"].items()}
    with open(os.path.join(workdir, f"{name}_null_odds.json"), "w", encoding="utf-8") as f:
      json.dump(odds, f, indent=1)


def evaluate_split(loaded, split: str, name: str, label: str) -> tuple[dict, object]:
  """SQuAD's metrics of a restored span model on a split, and the writer of its answers
  (Kind.evaluate)."""
  data, logits = predicted_split(loaded, qa_data.load, split, name, SpanPredictor)
  report, answers = split_answers(loaded.config, data, split, logits)
  console(f"{label}: " + format_metrics(report, loaded.trainer.objective.eval_keys))
  return report, lambda workdir, stem: write_answers(workdir, stem, answers,
                                                     data.task.unanswerable)


class QuestionAnswering(Kind):
  """Extractive question answering: the answer's start and end in a context (SQuAD v1 and v2)."""

  name = "qa"

  def load(self, config, tokenizer, workdir, found):
    return load_qa_data(config, tokenizer, workdir, found)

  def metric(self, config, data) -> str:
    return config.finetune.metric or "f1"

  def prepared(self, data, tokenizer):
    return prepared_split(data, qa_data.EVAL)

  def describe(self, config, data, metric: str) -> str:
    return (f"{config.model.family} {config.model.size} span extractor (start / end logits); "
            f"{config.train.steps} steps ({config.finetune.epochs:g} epochs), best by {metric}")

  def predictor(self, trainer):
    return SpanPredictor(trainer)

  def report(self, predictor, params, batches, config, tokenizer, data) -> dict:
    return split_answers(config, data, qa_data.EVAL, predictor(params, batches))[0]

  def final(self, workdir, config, trainer, predictor, tokenizer, data, best_step, metric):
    return qa_test_report(workdir, config, trainer, predictor, data, best_step, metric)

  def evaluate_split(self, loaded, split, name, label):
    return evaluate_split(loaded, split, name, label)

  def resampled_metric(self, records, indices, metric):
    # exact match and F1 are means over the questions
    return float(np.mean(np.asarray(records[metric])[indices]))

  def compare_stage(self) -> Downstream:
    return Downstream(
        "qa", "question answering", "qa", {"cloze": "json"}, self.finetune,
        lambda family: family.span_model is not None,
        lambda config: config.finetune.metric or "f1", ("f1", "exact_match"),
        "extractive QA needs a bidirectional encoder", _compare_fields,
        formats=((".json", "json"),), records=self.example_records,
        resampled=self.resampled_metric)


def _compare_fields(s, config) -> None:
  """A compare stage's own fields (s) into its QA config."""
  config.qa.max_query_length = s.max_query_length
  config.qa.doc_stride = s.doc_stride


QUESTION_ANSWERING = QuestionAnswering()
