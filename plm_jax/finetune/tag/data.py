"""Token-tagging examples: sentences of words with one tag each -> sub-token arrays.

Sources: a TFDS dataset by name (a sequence of words and a sequence of ClassLabel tags, read with
`tfds.data_source`), CoNLL files (a word and its columns per line, the tag in
tag.tag_column; blank lines end sentences, -DOCSTART- lines are document breaks) or JSON
lines {"tokens": [...], "tags": [...]}. A bad sentence (a line without the tag column, a record
whose words and tags differ in number) is skipped and counted; a tag the train and validation
data do not know is an error.

Alignment, as Hugging Face's run_ner.py: every word is tokenised on its own and its tag goes on
its first sub-token; the other sub-tokens (and the special tokens of the family's layout,
plm_jax/families.py) carry no label (-1), so they neither train nor count. Byte-level BPE
(RoBERTa, GPT-2) reads a word after the first with its leading space, as in running text.

Sentences longer than data.max_seq_length are truncated at a word boundary, and the words cut
are counted: the metrics count each as predicted "O" (or wrong, for tags without "O"), so a
report never looks better for having dropped words. Truncation rather than sliding windows: at
the default 128 sub-tokens CoNLL-2003 loses a handful of its sentences' ends, and every
prediction keeps one forward pass of one sentence (what transformers' pipeline does too).
"""

import dataclasses
import json
import os

import numpy as np

from plm_jax import families
from plm_jax.data.sources import open_tfds
from plm_jax.data.tokenizer import TextTokenizer
from plm_jax.errors import DataError
from plm_jax.finetune.classify.data import EVAL, TEST, TRAIN
from plm_jax.finetune.classify.tasks import Task
from plm_jax.finetune.tag.metrics import is_entity_scheme
from plm_jax.finetune.tag.tasks import tag_task_of

NO_LABEL = -1


@dataclasses.dataclass
class Sentences:
  """One split as words: tags are raw (strings, or ClassLabel ids from TFDS), None for a
  sentence without tags (a test file of words only)."""
  words: list[list[str]]
  tags: list[list | None]
  skipped: int = 0
  where: str = ""
  first_bad: str = ""           # where the first skipped sentence was, for the error message


@dataclasses.dataclass
class TagData:
  tokenizer: TextTokenizer
  splits: dict[str, dict[str, np.ndarray]]   # input_ids, segment_ids, attention_mask, labels
  num_classes: int                           # [N, T] (a tag id on first sub-tokens, else -1),
  label_names: tuple[str, ...]               # example_index [N]
  labeled: dict[str, bool]
  skipped: dict[str, int]                    # sentences skipped
  truncated: dict[str, int]                  # sentences cut by max_seq_length
  cut_words: dict[str, int]                  # words cut by it
  descriptions: dict[str, str]
  words: dict[str, list[list[str]]]          # per split, per sentence
  gold: dict[str, list[np.ndarray]]          # tag ids per word (-1: none)
  starts: dict[str, list[np.ndarray]]        # per word: its first sub-token's position, or -1
  entity_scheme: bool                        # do the tags name entities (IOB / IOBES)?
  metric: str                                # "f1" or "accuracy"


# --- reading ---------------------------------------------------------------------------------------

def _missing(path: str) -> None:
  if not os.path.isfile(path):
    raise DataError(f"{path} does not exist: give an existing file in finetune.train_path / "
                    "eval_path / test_path")


def read_conll(path: str, column: int, tags_optional: bool = False) -> Sentences:
  """Sentences of a CoNLL file: whitespace-separated columns, the word first, the tag in
  `column` (-1: the last). A sentence with a line lacking that column is skipped and counted;
  `tags_optional` (test files): lines of one column are words without tags."""
  _missing(path)
  out = Sentences([], [], where=path)
  words, tags, bad, bad_line = [], [], False, 0

  def flush():
    nonlocal words, tags, bad
    if bad:
      out.skipped += 1
      out.first_bad = out.first_bad or f"{path}:{bad_line}"
    elif words:
      out.words.append(words)
      out.tags.append(None if all(t is None for t in tags) else tags)
    words, tags, bad = [], [], False

  with open(path, encoding="utf-8", errors="replace") as f:
    for number, line in enumerate(f, 1):
      parts = line.split()
      if not parts or parts[0] == "-DOCSTART-":
        flush()
        continue
      if len(parts) == 1 and tags_optional:
        words.append(parts[0])
        tags.append(None)
      elif 1 <= (column if column >= 0 else len(parts) + column) < len(parts):
        words.append(parts[0])
        tags.append(parts[column])
      else:
        if not bad:
          bad_line = number
        bad = True
  flush()
  return out


def read_jsonl(path: str, words_field: str, tags_field: str,
               tags_optional: bool = False) -> Sentences:
  """Sentences of JSON lines {words_field: [...], tags_field: [...]}; a record that is not
  JSON, lacks the words, or has not one tag per word is skipped and counted."""
  _missing(path)
  out = Sentences([], [], where=path)
  with open(path, encoding="utf-8", errors="replace") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        row = None
      words = row.get(words_field) if isinstance(row, dict) else None
      tags = row.get(tags_field) if isinstance(row, dict) else None
      if tags is None and tags_optional and isinstance(words, list):
        tags = [None] * len(words)
      if not (isinstance(words, list) and words and isinstance(tags, list)
              and len(tags) == len(words) and all(isinstance(w, str) and w for w in words)):
        out.skipped += 1
        out.first_bad = out.first_bad or f"{path}:{number}"
        continue
      out.words.append(words)
      out.tags.append(None if all(t is None for t in tags) else tags)
  return out


def _decode(value) -> str:
  return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def read_tfds(task: Task, split: str, data_dir: str) -> tuple[Sentences, tuple[str, ...]]:
  """A TFDS split of word sequences and ClassLabel tag sequences, and the tags' names."""
  # conll2003, wikiann and xtreme_pos live in tfds' text package, which `import tfds` does not
  # register (as GLUE's).
  source = open_tfds(task.tfds_name, split, data_dir, register=(
      f"tensorflow_datasets.text.{task.tfds_name.split('/')[0]}",))
  features = source.dataset_info.features
  if task.text_field not in features or task.label_field not in features:
    raise DataError(f"TFDS dataset {task.tfds_name!r} has no feature {task.text_field!r} or "
                    f"{task.label_field!r} (features: {sorted(features.keys())}); name them "
                    "with classify.text_field / label_field")
  names: tuple[str, ...] = ()
  try:
    names = tuple(features[task.label_field].feature.names)
  except AttributeError:
    pass
  out = Sentences([], [], where=f"{task.tfds_name}[{split}]")
  for i in range(len(source)):
    row = source[i]
    words = [_decode(w) for w in np.asarray(row[task.text_field]).tolist()]
    tags = np.asarray(row[task.label_field]).tolist()
    if not words or len(words) != len(tags):
      out.skipped += 1
      continue
    out.words.append(words)
    out.tags.append([_decode(t) if isinstance(t, bytes) else t for t in tags])
  return out, names


def _hold_out(s: Sentences, fraction: float) -> tuple[Sentences, Sentences]:
  """Every k-th sentence of the train file for validation (deterministic)."""
  every = max(2, round(1 / max(fraction, 1e-9)))
  if len(s.words) < 4:
    raise DataError(f"{s.where} holds {len(s.words)} usable sentences: too few to hold any out "
                    "for validation; give finetune.eval_path")
  held = [i % every == every - 1 for i in range(len(s.words))]
  pick = lambda want: Sentences([w for w, h in zip(s.words, held) if h == want],  # noqa: E731
                                [t for t, h in zip(s.tags, held) if h == want], 0, s.where)
  train, evaluation = pick(False), pick(True)
  train.skipped, train.first_bad = s.skipped, s.first_bad
  return train, evaluation


def read_splits(config) -> tuple[Task, dict[str, Sentences], tuple[str, ...]]:
  """The sentences of the train, eval and (when there is one) test splits, and the tag names
  the source gives (TFDS's ClassLabel names)."""
  task, ft = tag_task_of(config), config.finetune
  if task.source == "tfds":
    out, names = {}, task.label_names
    for split, name in ((TRAIN, task.train_split), (EVAL, task.eval_split),
                        (TEST, task.test_split)):
      if name:
        out[split], found = read_tfds(task, name, ft.tfds_data_dir)
        names = names or found
    return task, out, names

  def read(path, optional=False):
    if task.source == "conll":
      return read_conll(path, config.tag.tag_column, optional)
    return read_jsonl(path, task.text_field, task.label_field, optional)

  out = {TRAIN: read(ft.train_path)}
  if ft.eval_path:
    out[EVAL] = read(ft.eval_path)
  else:
    out[TRAIN], out[EVAL] = _hold_out(out[TRAIN], config.data.eval_fraction)
  if ft.test_path:
    out[TEST] = read(ft.test_path, optional=True)
  return task, out, task.label_names


# --- tags ------------------------------------------------------------------------------------------

def tag_names(splits: dict[str, Sentences], names: tuple[str, ...]) -> tuple[str, ...]:
  """The tags in id order: the source's (TFDS ClassLabel) or the config's, else the sorted
  tags of the train and validation files."""
  if names:
    return tuple(names)
  found = {str(t) for s in (TRAIN, EVAL) if s in splits for tags in splits[s].tags
           if tags is not None for t in tags}
  return tuple(sorted(found))


def tag_ids(s: Sentences, names: tuple[str, ...]) -> list[np.ndarray]:
  """Tag ids per word (-1 for sentences without tags); an unknown tag is an error."""
  index = {n: i for i, n in enumerate(names)}
  out = []
  for number, tags in enumerate(s.tags):
    if tags is None:
      out.append(np.full(len(s.words[number]), NO_LABEL, np.int32))
      continue
    ids = []
    for t in tags:
      if isinstance(t, (int, np.integer)) and not isinstance(t, bool) and 0 <= t < len(names):
        ids.append(int(t))
      elif str(t) in index:
        ids.append(index[str(t)])
      else:
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        raise DataError(f"{s.where}: sentence {number + 1} has the tag {t!r}, not one of the "
                        f"{len(names)} tags of the train and validation data ({shown}); give "
                        "every tag in classify.label_names, or fix the file")
    out.append(np.asarray(ids, np.int32))
  return out


# --- alignment -------------------------------------------------------------------------------------

def align(tok: TextTokenizer, family: str, sentences: list[list[str]], gold: list[np.ndarray],
          max_seq_length: int) -> tuple[dict[str, np.ndarray], list[np.ndarray], int, int]:
  """Sentences -> (arrays: input_ids, segment_ids, attention_mask, labels [N, T]; per sentence
  the position of each word's first sub-token (-1: cut); sentences cut; words cut)."""
  layout = families.get(family).pair_layout
  prefix = [tok.role_id(r) for r in layout.prefix]
  suffix = [tok.role_id(r) for r in layout.suffix]
  budget = max_seq_length - len(prefix) - len(suffix)
  if budget < 1:
    raise DataError(f"data.max_seq_length={max_seq_length} leaves no room for words")
  # Byte-level BPE sees the space before a word (running text): "Ġword" is another token
  # than "word". WordPiece and SentencePiece mark word starts themselves.
  spaced = tok.kind == "bpe"
  flat = [(" " + w if spaced and j else w) for words in sentences for j, w in enumerate(words)]
  pieces = tok.encode_batch(flat) if flat else []
  n = len(sentences)
  input_ids = np.full((n, max_seq_length), tok.pad_id, np.int32)
  segment_ids = np.zeros((n, max_seq_length), np.int32)
  attention_mask = np.zeros((n, max_seq_length), np.int32)
  labels = np.full((n, max_seq_length), NO_LABEL, np.int32)
  starts, cut_sentences, cut_words, at = [], 0, 0, 0
  for r, words in enumerate(sentences):
    ids, first = list(prefix), np.full(len(words), -1, np.int32)
    for j in range(len(words)):
      p = pieces[at + j]
      if len(ids) + len(p) > budget + len(prefix):
        cut_sentences += 1
        cut_words += len(words) - j
        break
      if p:                     # a word no token spells (rare: control characters) stays -1
        first[j] = len(ids)
        ids += p
    at += len(words)
    ids += suffix
    input_ids[r, :len(ids)] = ids
    attention_mask[r, :len(ids)] = 1
    if layout.last_segment is not None:
      segment_ids[r, len(ids) - 1] = layout.last_segment
    kept = first >= 0
    labels[r, first[kept]] = gold[r][kept]
    starts.append(first)
  return ({"input_ids": input_ids, "segment_ids": segment_ids, "attention_mask": attention_mask,
           "labels": labels}, starts, cut_sentences, cut_words)


def load(config, tokenizer: TextTokenizer) -> TagData:
  """Reads, tags and aligns every split of the config's tagging task."""
  task, splits, names = read_splits(config)
  for split in (TRAIN, EVAL):
    s = splits[split]
    if not any(t is not None for t in s.tags):
      bad = f" (first at {s.first_bad})" if s.first_bad else ""
      raise DataError(f"{s.where} holds no tagged sentences ({s.skipped} skipped{bad}): check "
                      "tag.tag_column / classify.text_field / label_field")
  names = tag_names(splits, names)
  if len(names) < 2:
    raise DataError(f"{splits[TRAIN].where}: the tags give {len(names)} class(es); a tagger "
                    "needs 2 or more")
  entity_scheme = is_entity_scheme(names)
  metric = task.metric or ("f1" if entity_scheme else "accuracy")
  if metric == "f1" and not entity_scheme:
    raise DataError(f"finetune.metric=f1 needs entity tags (O, B-X, I-X, ...); the tags of "
                    f"{splits[TRAIN].where} are {', '.join(names[:8])}: use "
                    "--config.finetune.metric=accuracy")
  out = TagData(tokenizer, {}, len(names), names, {}, {}, {}, {}, {}, {}, {}, {},
                entity_scheme, metric)
  for split, s in splits.items():
    gold = tag_ids(s, names)
    arrays, starts, cut, cut_words = align(tokenizer, config.model.family, s.words, gold,
                                           config.data.max_seq_length)
    arrays["example_index"] = np.arange(len(s.words), dtype=np.int32)
    out.splits[split] = arrays
    out.labeled[split] = any(t is not None for t in s.tags)
    out.skipped[split], out.truncated[split], out.cut_words[split] = s.skipped, cut, cut_words
    out.descriptions[split] = s.where
    out.words[split], out.gold[split], out.starts[split] = s.words, gold, starts
  return out
