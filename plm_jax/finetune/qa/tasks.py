"""The question-answering tasks known by name, and the checks of a QA config.

A QA config (`--config qa:TASK`, plm_jax/configs/qa.py) holds two groups: `finetune`, the
fields every fine-tuning run shares (task, epochs, warmup, layer decay, head learning
rate, TFDS name / data_dir / splits, local file paths, the best checkpoint's metric), and `qa`,
what only question answering has (query length, document stride, answer length, n-best, the
no-answer threshold). A task says where the examples come from and whether questions may be
unanswerable (SQuAD v2.0's no-answer predictions and HasAns / NoAns metrics).
"""

import dataclasses

from plm_jax import families
from plm_jax.errors import ConfigError

QA_METRICS = ("f1", "exact_match")


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
    # Local SQuAD-format JSON: finetune.train_path, eval_path (or held out), test_path.
    "json": QATask("json", False),
    "json_v2": QATask("json", True),
}


def qa_task_of(config) -> QATask:
  """The config's task with the finetune group's non-empty TFDS fields over its defaults."""
  ft = config.finetune
  if ft.task not in QA_TASKS:
    raise ConfigError(f"finetune.task={ft.task!r} is not a question-answering task: one of "
                      f"{sorted(QA_TASKS)}; e.g. --config qa:squad (or qa:json with "
                      "--config.finetune.train_path=train.json)")
  overrides = {f: ft[f] for f in ("tfds_name", "train_split", "eval_split", "test_split")
               if ft[f]}
  return dataclasses.replace(QA_TASKS[ft.task], **overrides)


def validate_qa(config) -> None:
  """Checks a QA config (called by plm_jax.checks before anything is built)."""
  ft, q = config.finetune, config.qa
  task = qa_task_of(config)
  family = families.get(config.model.family)
  if family.span_model is None:
    raise ConfigError(f"extractive question answering needs a bidirectional encoder and "
                      f"--init-from holds a {family.name} run; fine-tune one of "
                      f"{', '.join(families.span_families())}")
  if (ft.metric or "f1") not in QA_METRICS:
    raise ConfigError(f"finetune.metric={ft.metric!r} is not a question-answering metric; use "
                      f"one of {', '.join(QA_METRICS)}")
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
  if not 0 <= ft.warmup_fraction < 1 or ft.epochs < 0 or not 0 < ft.layer_decay <= 1:
    raise ConfigError("finetune.epochs must be >= 0, finetune.warmup_fraction in [0, 1) and "
                      "finetune.layer_decay in (0, 1]")
  if task.source == "json" and not ft.train_path:
    raise ConfigError(f"finetune.task={ft.task!r} reads SQuAD-format JSON files: give "
                      "--config.finetune.train_path=train.json (and eval_path, test_path)")
