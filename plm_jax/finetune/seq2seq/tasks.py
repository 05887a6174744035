"""The generation tasks (prompt -> completion) known by name, and the checks of a config's
seq2seq group (`plm-jax finetune --config seq2seq:TASK`).

A GPT model is fine-tuned on `prompt completion <eos>` sequences with the loss on the
completion only. The prompt is the source text in a template, as GPT-2's paper prompted its
zero-shot tasks: "{source} =" then " target" for translation ("english sentence = french
sentence"), "{source}\\nTL;DR:" then " summary" for summarisation.
"""

import dataclasses

from plm_jax import families
from plm_jax.errors import ConfigError

# The best checkpoint's metric: sacreBLEU's corpus BLEU, ROUGE-1/2/L F-measures (rouge-score),
# exact match (all in percent, higher is better), or the validation loss (lower is better; the
# metric when decoding is off).
METRICS = ("bleu", "rouge1", "rouge2", "rougeL", "exact_match", "loss")
DECODERS = ("greedy", "sample", "beam")

TRANSLATE = "{source} ="
SUMMARISE = "{source}\nTL;DR:"


@dataclasses.dataclass(frozen=True)
class GenTask:
  source: str                          # "tfds", "jsonl" or "tsv"
  tfds_name: str = ""
  source_field: str = "source"
  target_field: str = "target"
  template: str = TRANSLATE            # the prompt: "{source}" is replaced by the source text
  target_prefix: str = " "             # put before the target (a byte-level BPE word start)
  metric: str = "bleu"
  max_seq_length: int = 256            # prompt + completion tokens of one example
  train_split: str = "train"
  eval_split: str = "validation"
  test_split: str = "test"


TASKS = {
    # WMT 2014 (Bojar et al., 2014): German -> English and English -> German newstest2014
    "wmt14_de_en": GenTask("tfds", "wmt14_translate/de-en", "de", "en"),
    "wmt14_en_de": GenTask("tfds", "wmt14_translate/de-en", "en", "de"),
    # CNN / Daily Mail (Hermann et al., 2015; See et al., 2017) and XSum (Narayan et al., 2018)
    "cnn_dailymail": GenTask("tfds", "cnn_dailymail", "article", "highlights", SUMMARISE,
                             metric="rougeL", max_seq_length=1024),
    "xsum": GenTask("tfds", "xsum", "document", "summary", SUMMARISE, metric="rougeL",
                    max_seq_length=1024),
    # Local files: JSON lines with named fields; TSV with a header naming the columns, or two
    # columns (source, target) without one.
    "jsonl": GenTask("jsonl"),
    "tsv": GenTask("tsv"),
}


def gen_task_of(config) -> GenTask:
  """The config's task with the non-empty fields of the finetune and seq2seq groups over the
  task's defaults."""
  g, ft = config.seq2seq, config.finetune
  given = {**ft, **g}
  if ft.task not in TASKS:
    raise ConfigError(f"finetune.task={ft.task!r} is not one of {sorted(TASKS)}; e.g. --config "
                      "seq2seq:jsonl with finetune.train_path")
  overrides = {f: given[f] for f in ("tfds_name", "source_field", "target_field", "template",
                                     "train_split", "eval_split", "test_split", "metric")
               if given[f]}
  if g.target_prefix != "default":
    overrides["target_prefix"] = g.target_prefix
  return dataclasses.replace(TASKS[ft.task], **overrides)


def best_metric(config) -> str:
  """The metric the best checkpoint is chosen by: the task's, or the loss without decoding."""
  return gen_task_of(config).metric if config.seq2seq.eval_examples > 0 else "loss"


def require_decoder(config) -> None:
  family = families.get(config.model.family)
  if not family.decoder:
    raise ConfigError(f"generation fine-tuning needs a decoder (GPT) body; "
                      f"{config.finetune.init_from or 'the config'} holds a {family.name} model: "
                      "give a GPT pretraining run or an imported GPT-2 as --init-from")


def validate_seq2seq(config) -> None:
  """Checks the finetune and seq2seq groups (called by plm_jax.checks before anything is
  built)."""
  g = config.seq2seq
  ft = config.finetune
  task = gen_task_of(config)
  require_decoder(config)
  if task.metric not in METRICS:
    raise ConfigError(f"finetune.metric={task.metric!r} is not one of {', '.join(METRICS)}")
  if task.template.count("{source}") != 1:
    raise ConfigError(f"seq2seq.template={task.template!r} must hold {{source}} once, e.g. "
                      f"{TRANSLATE!r}")
  if g.decode not in DECODERS:
    raise ConfigError(f"seq2seq.decode={g.decode!r} is not one of {', '.join(DECODERS)}")
  if g.beam_size < 1 or g.max_new_tokens < 1 or g.decode_batch < 1:
    raise ConfigError("seq2seq.beam_size, max_new_tokens and decode_batch must be >= 1")
  if g.repetition_penalty <= 0 or g.no_repeat_ngram_size < 0:
    raise ConfigError(f"seq2seq.repetition_penalty={g.repetition_penalty} must be > 0 (1 = "
                      f"none) and seq2seq.no_repeat_ngram_size={g.no_repeat_ngram_size} >= 0 "
                      "(0 = none); e.g. --config.seq2seq.repetition_penalty=1.2")
  if g.eval_examples < 0 or g.report_examples < 0 or g.max_target_length < 0:
    raise ConfigError("seq2seq.eval_examples, report_examples and max_target_length must be "
                      ">= 0 (0 = decoding off / the whole split / no cap)")
  if g.max_new_tokens >= config.model.max_position:
    raise ConfigError(f"seq2seq.max_new_tokens={g.max_new_tokens} leaves no room for a prompt "
                      f"in the model's {config.model.max_position} positions")
  if config.data.max_seq_length > config.model.max_position:
    raise ConfigError(f"data.max_seq_length={config.data.max_seq_length} exceeds the model's "
                      f"{config.model.max_position} positions; use --config.data.max_seq_length="
                      f"{config.model.max_position}")
  if ft.epochs < 0 or not 0 <= ft.warmup_fraction < 1:
    raise ConfigError("finetune.epochs must be >= 0, finetune.warmup_fraction in [0, 1)")
  if task.source in ("jsonl", "tsv") and not ft.train_path:
    raise ConfigError(f"finetune.task={ft.task!r} reads local files: give "
                      f"--config.finetune.train_path=train.{task.source} (and eval_path, "
                      "test_path)")
