"""Generation examples: (source, target) records of a split -> packed GPT rows whose loss falls
on the completions only.

An example is `template(source) target_prefix+target <eos>`: the prompt (the source in the
task's template) and the completion (the target and its end-of-text), tokenised apart so that
decoding feeds exactly the prompt the model was trained on. Too long an example loses source
tokens first (the template is kept), then target tokens (its <eos> is kept). Examples are packed
whole into rows of data.max_seq_length + 1 tokens by the pretraining packer
(examples.gpt_packed_examples: segment ids, positions restarting at each example, so attention
never crosses examples); `targets` marks the completion tokens, and the loader gives the loss
weight 1 to the predictions of those tokens only (plm_jax/data/loader.py, builder "seq2seq").

Sources: a TFDS dataset (`tfds.data_source`), JSON lines with named fields, or TSV (a header
naming the columns, or source<TAB>target rows without one). Records without a source or a
target are skipped and counted.
"""

import csv
import dataclasses
import json
import os

import numpy as np

from plm_jax.data import examples as ex
from plm_jax.data.sources import open_tfds
from plm_jax.data.tokenizer import TextTokenizer
from plm_jax.errors import DataError
from plm_jax.finetune.classify.data import EVAL, TEST, TRAIN, nonblank_text
from plm_jax.finetune.seq2seq.tasks import GenTask, gen_task_of

SPLITS = {"validation": EVAL, "test": TEST, "train": TRAIN}


@dataclasses.dataclass
class Pairs:
  """One split as text, with each record's id (TFDS's `id` field, else its position)."""
  sources: list[str]
  targets: list[str]
  ids: list = dataclasses.field(default_factory=list)
  skipped: int = 0
  where: str = ""


@dataclasses.dataclass
class Encoded:
  """One split tokenised: per example its prompt and completion ids, and its packed rows."""
  pairs: Pairs
  prompts: list[list[int]]
  completions: list[list[int]]          # target ids + <eos>
  rows: dict[str, np.ndarray]           # tokens, segment_ids, positions, targets
  truncated: int = 0


def _add(out: Pairs, row: dict, task: GenTask, position: int) -> None:
  source, target = nonblank_text(row.get(task.source_field)), nonblank_text(row.get(task.target_field))
  if source is None or target is None:
    out.skipped += 1
    return
  out.sources.append(source)
  out.targets.append(target)
  out.ids.append(nonblank_text(row.get("id")) or position)


def _tfds_split(task: GenTask, split: str, data_dir: str) -> Pairs:
  # The WMT and summarisation builders live in tfds packages `import tfds` does not register.
  source = open_tfds(task.tfds_name, split, data_dir, register=(
      "tensorflow_datasets.translate.wmt14" if task.tfds_name.startswith("wmt")
      else "tensorflow_datasets.summarization",))
  out = Pairs([], [], where=f"{task.tfds_name}[{split}]")
  for i in range(len(source)):
    _add(out, dict(source[i]), task, i)
  return out


def _file_split(task: GenTask, path: str) -> Pairs:
  if not os.path.isfile(path):
    raise DataError(f"{path} does not exist: give an existing {task.source} file in "
                    "finetune.train_path / eval_path / test_path")
  out = Pairs([], [], where=path)
  with open(path, encoding="utf-8", errors="replace", newline="") as f:
    if task.source == "jsonl":
      for number, line in enumerate(f):
        try:
          row = json.loads(line) if line.strip() else {}
        except json.JSONDecodeError:
          row = {}
        _add(out, row if isinstance(row, dict) else {}, task, number)
      if out.sources or not out.skipped:
        return out
      raise DataError(f"{path} has no record with both fields {task.source_field!r} and "
                      f"{task.target_field!r}; name them with --config.seq2seq.source_field / "
                      "target_field")
    rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
  header = rows[0] if rows else []
  if task.source_field in header and task.target_field in header:
    s, t = header.index(task.source_field), header.index(task.target_field)
    rows = rows[1:]
  elif len(header) == 2 and not set(header) & {"source", "target"}:
    s, t = 0, 1                                   # headerless source<TAB>target
  else:
    raise DataError(f"{path} has no columns {task.source_field!r} and {task.target_field!r} "
                    f"(first row: {header}); name them with --config.seq2seq.source_field / "
                    "target_field, or give two columns without a header")
  for number, row in enumerate(rows):
    _add(out, {"a": row[s] if len(row) > s else None, "b": row[t] if len(row) > t else None},
         dataclasses.replace(task, source_field="a", target_field="b"), number)
  return out


def _hold_out(pairs: Pairs, fraction: float) -> tuple[Pairs, Pairs]:
  """Every k-th record of the train file for validation (deterministic)."""
  every = max(2, round(1 / max(fraction, 1e-9)))
  n = len(pairs.sources)
  if n < 4:
    raise DataError(f"{pairs.where} holds {n} usable records: too few to hold any out for "
                    "validation; give finetune.eval_path")

  def pick(held):
    idx = [i for i in range(n) if (i % every == every - 1) == held]
    return Pairs([pairs.sources[i] for i in idx], [pairs.targets[i] for i in idx],
                 [pairs.ids[i] for i in idx], 0, pairs.where)
  train, held = pick(False), pick(True)
  train.skipped = pairs.skipped
  return train, held


def read_splits(config, wanted=(TRAIN, EVAL, TEST)) -> dict[str, Pairs]:
  """The records of the wanted splits that the task has."""
  task, ft = gen_task_of(config), config.finetune
  if task.source == "tfds":
    names = {TRAIN: task.train_split, EVAL: task.eval_split, TEST: task.test_split}
    return {s: _tfds_split(task, names[s], ft.tfds_data_dir) for s in wanted if names[s]}
  out = {}
  if TRAIN in wanted or (EVAL in wanted and not ft.eval_path):
    out[TRAIN] = _file_split(task, ft.train_path)
    if not ft.eval_path:
      out[TRAIN], out[EVAL] = _hold_out(out[TRAIN], config.data.eval_fraction)
  if EVAL in wanted and ft.eval_path:
    out[EVAL] = _file_split(task, ft.eval_path)
  if TEST in wanted and ft.test_path:
    out[TEST] = _file_split(task, ft.test_path)
  return {s: p for s, p in out.items() if s in wanted}


# --- encoding --------------------------------------------------------------------------------------

def prompt_parts(tok: TextTokenizer, task: GenTask) -> tuple[list[int], list[int]]:
  """The template's ids before and after the source."""
  before, after = task.template.split("{source}")
  return (tok.encode_batch([before])[0] if before else [],
          tok.encode_batch([after])[0] if after else [])


def encode(tok: TextTokenizer, task: GenTask, pairs: Pairs, max_seq_length: int,
           max_target_length: int = 0) -> Encoded:
  """Prompts and completions of a split, each example at most max_seq_length tokens."""
  before, after = prompt_parts(tok, task)
  if max_seq_length < len(before) + len(after) + 2:
    raise DataError(f"data.max_seq_length={max_seq_length} leaves no room for a source and a "
                    f"target after the template's {len(before) + len(after)} tokens")
  sources = tok.encode_batch(pairs.sources) if pairs.sources else []
  targets = tok.encode_batch([task.target_prefix + t for t in pairs.targets]) \
      if pairs.targets else []
  prompts, completions, truncated = [], [], 0
  for source, target in zip(sources, targets):
    cut = False
    if max_target_length and len(target) > max_target_length:
      target, cut = target[:max_target_length], True
    room = max_seq_length - len(before) - len(after) - 1        # 1: <eos>
    if len(target) > room - 1:                                   # keep one source token
      target, cut = target[:room - 1], True
    if len(source) > room - len(target):
      source, cut = source[:room - len(target)], True
    truncated += int(cut)
    prompts.append(before + source + after)
    completions.append(target + [tok.eos_id])
  rows = pack(prompts, completions, max_seq_length)
  return Encoded(pairs, prompts, completions, rows, truncated)


def pack(prompts: list[list[int]], completions: list[list[int]], max_seq_length: int
         ) -> dict[str, np.ndarray]:
  """Examples packed in order by the pretraining packer; `targets` is 1 on completion tokens.

  The packer ends every document with <eos>: the completion goes in without its own <eos>,
  which the packer puts back, in the same place."""
  docs = [p + c[:-1] for p, c in zip(prompts, completions)]
  eos = completions[0][-1] if completions else 0
  rows = ex.gpt_packed_examples(docs, max_seq_length=max_seq_length, eos_id=eos)
  starts = (rows["positions"] == 0) & (rows["segment_ids"] > 0)
  # the i-th document of the stream is the i-th segment, row by row (the packer never splits
  # an example of at most max_seq_length + 1 tokens)
  doc = np.cumsum(starts.reshape(-1)).reshape(starts.shape) - 1
  prompt_length = np.asarray([len(p) for p in prompts] or [0])[np.maximum(doc, 0)]
  targets = (rows["segment_ids"] > 0) & (rows["positions"] >= prompt_length)
  return {**rows, "targets": targets.astype(np.int8)}


def decode_prompts(tok: TextTokenizer, task: GenTask, encoded: Encoded, budget: int
                   ) -> list[list[int]]:
  """The prompts to decode, each cut to `budget` tokens by dropping source tokens (the
  template's ends are kept)."""
  before, after = prompt_parts(tok, task)
  out = []
  for prompt in encoded.prompts:
    if len(prompt) > budget:
      source = prompt[len(before):len(prompt) - len(after)]
      prompt = before + source[:max(0, budget - len(before) - len(after))] + after
    out.append(prompt)
  return out


def load(config, tokenizer: TextTokenizer, wanted=(TRAIN, EVAL, TEST)) -> dict[str, Encoded]:
  """Reads and encodes the wanted splits of the config's task."""
  task = gen_task_of(config)
  out = {}
  for split, pairs in read_splits(config, wanted).items():
    if split in (TRAIN, EVAL) and not pairs.sources:
      raise DataError(f"{pairs.where} holds no usable records ({pairs.skipped} skipped): check "
                      f"seq2seq.source_field={task.source_field!r} and "
                      f"target_field={task.target_field!r}")
    out[split] = encode(tokenizer, task, pairs, config.data.max_seq_length,
                        config.seq2seq.max_target_length)
  return out
