"""The classification tasks known by name, and the checks of a config's classify group.

A task says where its examples come from (a TFDS dataset, files, or the built-in corpus), which
fields hold the text(s) and the label, its splits, its classes, and the metric GLUE reports for
it (the one the best checkpoint is chosen by).
"""

import dataclasses

from plm_jax.errors import ConfigError

METRICS = ("accuracy", "f1", "macro_f1", "mcc", "pearson", "spearman", "mse")


@dataclasses.dataclass(frozen=True)
class Task:
  source: str                          # "tfds", "csv", "jsonl" or "builtin"
  tfds_name: str = ""
  text_field: str = "text"
  text_pair_field: str = ""
  label_field: str = "label"
  num_classes: int = 0                 # 0 = from the data; 1 = regression
  label_names: tuple[str, ...] = ()
  metric: str = "accuracy"
  train_split: str = "train"
  eval_split: str = "validation"
  test_split: str = "test"
  submit_names: bool = True            # test_predictions.tsv: class names (else class ids), as
                                       # the GLUE server wants for each task


def _glue(name, text, pair="", classes=2, metric="accuracy", names=(), **splits) -> Task:
  # GLUE's server takes class names for MNLI, QNLI and RTE and 0/1 for the other tasks.
  return Task("tfds", f"glue/{name}", text_field=text, text_pair_field=pair, num_classes=classes,
              label_names=names, metric=metric,
              submit_names=name in ("mnli", "qnli", "rte"), **splits)


TASKS = {
    # GLUE (Wang et al., 2018). The test splits carry no labels (-1): the test report then holds
    # predictions only, written in the format the GLUE server takes.
    "cola": _glue("cola", "sentence", metric="mcc", names=("unacceptable", "acceptable")),
    "sst2": _glue("sst2", "sentence", names=("negative", "positive")),
    "mrpc": _glue("mrpc", "sentence1", "sentence2", metric="f1",
                  names=("not_equivalent", "equivalent")),
    "qqp": _glue("qqp", "question1", "question2", metric="f1",
                 names=("not_duplicate", "duplicate")),
    "stsb": _glue("stsb", "sentence1", "sentence2", classes=1, metric="pearson"),
    "mnli": _glue("mnli", "premise", "hypothesis", classes=3,
                  names=("entailment", "neutral", "contradiction"),
                  eval_split="validation_matched", test_split="test_matched"),
    "mnli_mismatched": _glue("mnli", "premise", "hypothesis", classes=3,
                             names=("entailment", "neutral", "contradiction"),
                             eval_split="validation_mismatched",
                             test_split="test_mismatched"),
    "qnli": _glue("qnli", "question", "sentence", names=("entailment", "not_entailment")),
    "rte": _glue("rte", "sentence1", "sentence2", names=("entailment", "not_entailment")),
    "wnli": _glue("wnli", "sentence1", "sentence2", names=("not_entailment", "entailment")),
    # IMDB movie reviews (Maas et al., 2011): no validation split, so 10% of train is held out.
    "imdb": Task("tfds", "imdb_reviews", num_classes=2, label_names=("neg", "pos"),
                 train_split="train[:90%]", eval_split="train[90%:]", test_split="test"),
    # Local files: the columns are named in the config (classify.text_field, ...).
    "csv": Task("csv"),
    "jsonl": Task("jsonl"),
    # Built-in, no download: does sentence B continue sentence A's docstring (1), or come from
    # another docstring (0)? Sentence pairs from the built-in corpus, split by docstring.
    "builtin": Task("builtin", text_field="sentence1", text_pair_field="sentence2",
                    num_classes=2, label_names=("other", "continues")),
}


# --- token tagging (plm_jax/configs/tag.py): the same Task record, read as sentences -----------
# text_field holds a sentence's words and label_field its tags, one per word; the metric is "f1"
# (entity-level, IOB / IOBES tags) or "accuracy" (of words: part of speech); "" = "f1" when the
# tags name entities, else "accuracy" (local files).
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
    # Local files: CoNLL columns (word first; classify.tag_column picks the tags) or JSON lines
    # {"tokens": [...], "tags": [...]}.
    "conll": Task("conll", metric=""),
    "jsonl": Task("jsonl", text_field="tokens", label_field="tags", metric=""),
}


def task_of(config) -> Task:
  """The config's task with the classify group's non-empty fields over the task's defaults."""
  k = config.classify
  if config.objective.name == "tag":
    return _tag_task_of(k)
  if k.task not in TASKS:
    raise ConfigError(f"classify.task={k.task!r} is not one of {sorted(TASKS)}; e.g. "
                      "--config configs/classify.py:sst2 (or :csv with classify.train_path)")
  task = TASKS[k.task]
  overrides = {f: k[f] for f in ("tfds_name", "text_field", "text_pair_field", "label_field",
                                 "train_split", "eval_split", "test_split", "metric") if k[f]}
  if k.num_classes:
    overrides["num_classes"] = k.num_classes
    if k.num_classes == 1 and "metric" not in overrides and task.num_classes != 1:
      overrides["metric"] = "pearson"
  if k.label_names:
    overrides["label_names"] = tuple(k.label_names)
  return dataclasses.replace(task, **overrides)


def _tag_task_of(k) -> Task:
  if k.task not in TAG_TASKS:
    raise ConfigError(f"classify.task={k.task!r} is not a tagging task: one of "
                      f"{sorted(TAG_TASKS)}; e.g. --config tag:conll2003 (or tag:conll with "
                      "classify.train_path)")
  overrides = {f: k[f] for f in ("tfds_name", "text_field", "label_field", "train_split",
                                 "eval_split", "test_split", "metric") if k[f]}
  if k.label_names:
    overrides["label_names"] = tuple(k.label_names)
  return dataclasses.replace(TAG_TASKS[k.task], **overrides)


def _validate_tag(config) -> None:
  k, task = config.classify, task_of(config)
  if task.metric not in ("", *TAG_METRICS):
    raise ConfigError(f"classify.metric={task.metric!r}: a tagger's best checkpoint is chosen "
                      "by f1 (of entities) or accuracy (of words)")
  if k.num_classes < 0 or k.epochs < 0 or not 0 <= k.warmup_fraction < 1 or \
      not 0 < k.layer_decay <= 1 or k.head_learning_rate < 0:
    raise ConfigError("classify.num_classes, epochs and head_learning_rate must be >= 0, "
                      "classify.warmup_fraction in [0, 1), classify.layer_decay in (0, 1]")
  if task.source in ("conll", "jsonl") and not k.train_path:
    raise ConfigError(f"classify.task={k.task!r} reads local files: give "
                      f"--config.classify.train_path=train.{task.source} (and eval_path, "
                      "test_path)")


def validate_classify(config) -> None:
  """Checks the classify group (called by plm_jax.checks before anything is built)."""
  if config.objective.name == "tag":
    return _validate_tag(config)
  k = config.classify
  task = task_of(config)
  if k.num_classes < 0:
    raise ConfigError(f"classify.num_classes={k.num_classes} must be >= 1 (1 = regression)")
  metric = task.metric
  if metric not in METRICS:
    raise ConfigError(f"classify.metric={task.metric!r} is not one of {', '.join(METRICS)}")
  regression = task.num_classes == 1
  if regression != (metric in ("pearson", "spearman", "mse")):
    raise ConfigError(f"classify.metric={metric!r} does not fit a "
                      f"{'regression' if regression else 'classification'} task; use "
                      f"--config.classify.metric={'pearson' if regression else 'accuracy'}")
  if not 0 < k.layer_decay <= 1:
    raise ConfigError(f"classify.layer_decay={k.layer_decay} must be in (0, 1] (1 = off)")
  if k.head_learning_rate < 0 or k.epochs < 0 or not 0 <= k.warmup_fraction < 1:
    raise ConfigError("classify.head_learning_rate and classify.epochs must be >= 0, "
                      "classify.warmup_fraction in [0, 1)")
  if task.source in ("csv", "jsonl") and not k.train_path:
    raise ConfigError(f"classify.task={k.task!r} reads local files: give "
                      f"--config.classify.train_path=train.{task.source} (and eval_path, "
                      "test_path)")
