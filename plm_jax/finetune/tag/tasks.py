"""The token-tagging tasks known by name (plm_jax/configs/tag.py), and the checks of a tagging
config. A tagging task is classification's Task record read as sentences: text_field holds a
sentence's words and label_field its tags, one per word."""

import dataclasses

from plm_jax.errors import ConfigError
from plm_jax.finetune.classify.tasks import Task

# The metric is "f1" (entity-level, IOB / IOBES tags) or "accuracy" (of words: part of speech);
# "" = "f1" when the tags name entities, else "accuracy" (local files).
TAG_METRICS = ("f1", "accuracy")
TAG_TASKS = {
    # CoNLL-2003 English (Tjong Kim Sang & De Meulder, 2003): named entities (IOB2 in TFDS),
    # or its part-of-speech column.
    "conll2003": Task("tfds", "conll2003", text_field="tokens", label_field="ner", metric="f1",
                      eval_split="dev"),
    "conll2003_pos": Task("tfds", "conll2003", text_field="tokens", label_field="pos",
                          metric="accuracy", eval_split="dev"),
    # WikiANN English (Pan et al., 2017), XTREME's NER set; XTREME's English UD part of speech.
    "wikiann": Task("tfds", "wikiann/en", text_field="tokens", label_field="tags", metric="f1"),
    "xtreme_pos": Task("tfds", "xtreme_pos/xtreme_pos_en", text_field="tokens",
                       label_field="upos", metric="accuracy", eval_split="dev"),
    # Local files: CoNLL columns (word first; tag.tag_column picks the tags) or JSON lines
    # {"tokens": [...], "tags": [...]}.
    "conll": Task("conll", metric=""),
    "jsonl": Task("jsonl", text_field="tokens", label_field="tags", metric=""),
}



def tag_task_of(config) -> Task:
  """The config's task with the non-empty fields of the finetune and classify groups over the
  task's defaults."""
  k = {**config.finetune, **config.classify}
  if k["task"] not in TAG_TASKS:
    raise ConfigError(f"finetune.task={k['task']!r} is not a tagging task: one of "
                      f"{sorted(TAG_TASKS)}; e.g. --config tag:conll2003 (or tag:conll with "
                      "finetune.train_path)")
  overrides = {f: k[f] for f in ("tfds_name", "text_field", "label_field", "train_split",
                                 "eval_split", "test_split", "metric") if k[f]}
  if k["label_names"]:
    overrides["label_names"] = tuple(k["label_names"])
  return dataclasses.replace(TAG_TASKS[k["task"]], **overrides)


def validate_tag(config) -> None:
  """Checks the finetune, classify and tag groups (called by plm_jax.checks before anything is
  built)."""
  k, task = config.classify, tag_task_of(config)
  ft = config.finetune
  if task.metric not in ("", *TAG_METRICS):
    raise ConfigError(f"finetune.metric={task.metric!r}: a tagger's best checkpoint is chosen "
                      "by f1 (of entities) or accuracy (of words)")
  if k.num_classes < 0 or ft.epochs < 0 or not 0 <= ft.warmup_fraction < 1 or \
      not 0 < ft.layer_decay <= 1 or ft.head_learning_rate < 0:
    raise ConfigError("classify.num_classes, finetune.epochs and finetune.head_learning_rate "
                      "must be >= 0, finetune.warmup_fraction in [0, 1), finetune.layer_decay "
                      "in (0, 1]")
  if task.source in ("conll", "jsonl") and not ft.train_path:
    raise ConfigError(f"finetune.task={ft.task!r} reads local files: give "
                      f"--config.finetune.train_path=train.{task.source} (and eval_path, "
                      "test_path)")
