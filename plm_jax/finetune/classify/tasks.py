"""The classification tasks known by name, and the checks of a classification config's finetune
and classify groups (token tagging reads the same Task record: finetune/tag/tasks.py).

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


def task_of(config) -> Task:
  """The config's task with the non-empty fields of the finetune and classify groups over the
  task's defaults."""
  k, ft = config.classify, config.finetune
  given = {**ft, **k}
  if ft.task not in TASKS:
    raise ConfigError(f"finetune.task={ft.task!r} is not one of {sorted(TASKS)}; e.g. "
                      "--config configs/classify.py:sst2 (or :csv with finetune.train_path)")
  task = TASKS[ft.task]
  overrides = {f: given[f] for f in ("tfds_name", "text_field", "text_pair_field",
                                     "label_field", "train_split", "eval_split", "test_split",
                                     "metric") if given[f]}
  if k.num_classes:
    overrides["num_classes"] = k.num_classes
    if k.num_classes == 1 and "metric" not in overrides and task.num_classes != 1:
      overrides["metric"] = "pearson"
  if k.label_names:
    overrides["label_names"] = tuple(k.label_names)
  return dataclasses.replace(task, **overrides)


def validate_classify(config) -> None:
  """Checks the finetune and classify groups (called by plm_jax.checks before anything is
  built)."""
  k = config.classify
  ft = config.finetune
  task = task_of(config)
  if k.num_classes < 0:
    raise ConfigError(f"classify.num_classes={k.num_classes} must be >= 1 (1 = regression)")
  metric = task.metric
  if metric not in METRICS:
    raise ConfigError(f"finetune.metric={task.metric!r} is not one of {', '.join(METRICS)}")
  regression = task.num_classes == 1
  if regression != (metric in ("pearson", "spearman", "mse")):
    raise ConfigError(f"finetune.metric={metric!r} does not fit a "
                      f"{'regression' if regression else 'classification'} task; use "
                      f"--config.finetune.metric={'pearson' if regression else 'accuracy'}")
  if not 0 < ft.layer_decay <= 1:
    raise ConfigError(f"finetune.layer_decay={ft.layer_decay} must be in (0, 1] (1 = off)")
  if ft.head_learning_rate < 0 or ft.epochs < 0 or not 0 <= ft.warmup_fraction < 1:
    raise ConfigError("finetune.head_learning_rate and finetune.epochs must be >= 0, "
                      "finetune.warmup_fraction in [0, 1)")
  if task.source in ("csv", "jsonl") and not ft.train_path:
    raise ConfigError(f"finetune.task={ft.task!r} reads local files: give "
                      f"--config.finetune.train_path=train.{task.source} (and eval_path, "
                      "test_path)")
