"""The question-answering tasks known by name, and the checks of a QA config.

A QA config (`--config qa:TASK`, plm_jax/configs/qa.py) holds two groups: `classify`, the
fine-tuning fields every fine-tuning run shares (task, epochs, warmup, layer decay, head learning
rate, TFDS name / data_dir / splits, local file paths, the best checkpoint's metric), and `qa`,
what only question answering has (query length, document stride, answer length, n-best, the
no-answer threshold). A task says where the examples come from and whether questions may be
unanswerable (SQuAD v2.0's no-answer predictions and HasAns / NoAns metrics).
"""

import dataclasses

from plm_jax import families
from plm_jax.errors import ConfigError

QA_METRICS = ("f1", "exact_match")
# classify fields of sequence classification that mean nothing for question answering: a QA
# config that sets one is refused rather than silently ignoring it.
NOT_FOR_QA = ("num_classes", "label_names", "text_field", "text_pair_field", "label_field")


@dataclasses.dataclass(frozen=True)
class QATask:
  source: str                          # "tfds" or "json" (SQuAD-format files)
  unanswerable: bool                   # SQuAD v2.0: questions without an answer in the context
  tfds_name: str = ""
  train_split: str = "train"
  eval_split: str = "validation"
  test_split: str = ""                 # SQuAD's test sets are hidden: none by default


QA_TASKS = {
    # SQuAD (Rajpurkar et al., 2016 and 2018) from TFDS: train and validation (the dev set).
    "squad": QATask("tfds", False, "squad/v1.1"),
    "squad_v2": QATask("tfds", True, "squad/v2.0"),
    # Local SQuAD-format JSON: classify.train_path, eval_path (or held out), test_path.
    "json": QATask("json", False),
    "json_v2": QATask("json", True),
}


def qa_task_of(config) -> QATask:
  """The config's task with the classify group's non-empty TFDS fields over its defaults."""
  k = config.classify
  if k.task not in QA_TASKS:
    raise ConfigError(f"classify.task={k.task!r} is not a question-answering task: one of "
                      f"{sorted(QA_TASKS)}; e.g. --config qa:squad (or qa:json with "
                      "--config.classify.train_path=train.json)")
  overrides = {f: k[f] for f in ("tfds_name", "train_split", "eval_split", "test_split")
               if k[f]}
  return dataclasses.replace(QA_TASKS[k.task], **overrides)


def validate_qa(config) -> None:
  """Checks a QA config (called by plm_jax.checks before anything is built)."""
  k, q = config.classify, config.qa
  task = qa_task_of(config)
  family = families.get(config.model.family)
  if family.span_model is None:
    raise ConfigError(f"extractive question answering needs a bidirectional encoder and "
                      f"--init-from holds a {family.name} run; fine-tune one of "
                      f"{', '.join(families.span_families())}")
  if (k.metric or "f1") not in QA_METRICS:
    raise ConfigError(f"classify.metric={k.metric!r} is not a question-answering metric; use "
                      f"one of {', '.join(QA_METRICS)}")
  for field in NOT_FOR_QA:
    if k[field]:
      raise ConfigError(f"classify.{field} is for sequence classification; a question-answering "
                        f"task reads SQuAD's fields (context, question, answers): drop it")
  for field in ("max_query_length", "doc_stride", "max_answer_length", "n_best"):
    if q[field] < 1:
      raise ConfigError(f"qa.{field}={q[field]} must be >= 1")
  layout = family.pair_layout
  overhead = len(layout.prefix) + len(layout.middle) + len(layout.suffix)
  room = config.data.max_seq_length - overhead - q.max_query_length
  if room < 1:
    raise ConfigError(f"data.max_seq_length={config.data.max_seq_length} leaves no room for "
                      f"the context after a question of qa.max_query_length="
                      f"{q.max_query_length} tokens; raise it or lower the query length")
  if not 0 <= k.warmup_fraction < 1 or k.epochs < 0 or not 0 < k.layer_decay <= 1:
    raise ConfigError("classify.epochs must be >= 0, classify.warmup_fraction in [0, 1) and "
                      "classify.layer_decay in (0, 1]")
  if task.source == "json" and not k.train_path:
    raise ConfigError(f"classify.task={k.task!r} reads SQuAD-format JSON files: give "
                      "--config.classify.train_path=train.json (and eval_path, test_path)")
