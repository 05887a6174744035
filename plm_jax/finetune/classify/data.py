"""Classification examples: records of a split -> token id arrays, for every source kind.

Sources: a TFDS dataset (`tfds.data_source`, no TensorFlow needed), CSV or JSON-lines files with
named columns, or the built-in sentence-pair task. Bad records (a missing text, a label that is
not a number or a known class) are skipped and counted, never fatal.

Layouts, as the pretrained models saw them (each family's `pair_layout` in plm_jax/families.py):
  BERT / ALBERT   [CLS] a [SEP] b [SEP], segment ids 0 for "[CLS] a [SEP]" and 1 for "b [SEP]"
  RoBERTa         <s> a </s></s> b </s>, one segment
  GPT-2           a <eos> b <eos>; the classifier reads the last (<eos>) token
  XLNet           a <sep> b <sep> <cls>, segment ids 0 / 1 / 2 (<cls>); the classifier reads
                  <cls>, the last real token
Pairs too long for data.max_seq_length lose tokens from the end of the longer text first.
"""

import csv
import dataclasses
import json
import os

import numpy as np

from plm_jax import families
from plm_jax.data import sources
from plm_jax.data import builtin_tasks
from plm_jax.data.tokenizer import TextTokenizer
from plm_jax.errors import DataError
from plm_jax.finetune.classify.tasks import Task, task_of

TRAIN, EVAL, TEST = "train", "eval", "test"
UNLABELED = -1      # GLUE's hidden test labels


@dataclasses.dataclass
class Records:
  """One split as text: first texts, second texts (pair tasks), raw labels, and record ids (a
  dataset's own `idx` field, as GLUE's test sets have, else the record's position in its
  source) for the predictions file."""
  texts: list[str]
  pairs: list[str] | None
  labels: list
  skipped: int = 0
  where: str = ""
  ids: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class ClassifyData:
  tokenizer: TextTokenizer
  splits: dict[str, dict[str, np.ndarray]]   # TRAIN, EVAL and (if any) TEST arrays
  num_classes: int
  label_names: tuple[str, ...]
  labeled: dict[str, bool]                   # does the split carry labels?
  skipped: dict[str, int]
  truncated: dict[str, int]
  descriptions: dict[str, str]
  record_ids: dict[str, np.ndarray]          # per split row: the record's id (see Records)


# --- reading ---------------------------------------------------------------------------------------

def _tfds_split(task: Task, split: str, data_dir: str) -> tuple[Records, tuple[str, ...]]:
  # GLUE's builder lives in tfds' legacy text package, which `import tfds` does not register.
  source = sources.open_tfds(task.tfds_name, split, data_dir,
                             register=("tensorflow_datasets.text.glue",)
                             if task.tfds_name.startswith("glue/") else ())
  names: tuple[str, ...] = ()
  try:
    names = tuple(source.dataset_info.features[task.label_field].names)
  except (AttributeError, KeyError, TypeError):
    pass
  out = Records([], [] if task.text_pair_field else None, [], where=f"{task.tfds_name}[{split}]")
  for i in range(len(source)):
    _add(out, dict(source[i]), task, i)
  return out, names


def _file_rows(path: str, kind: str):
  if not os.path.isfile(path):
    raise DataError(f"{path} does not exist: give an existing {kind} file in "
                    "finetune.train_path / eval_path / test_path")
  with open(path, encoding="utf-8", errors="replace", newline="") as f:
    if kind == "csv":
      dialect = csv.excel_tab if path.endswith((".tsv", ".tab")) else csv.excel
      reader = csv.DictReader(f, dialect=dialect)
      yield reader.fieldnames or []
      yield from reader
    else:
      yield None
      for line in f:
        if line.strip():
          try:
            row = json.loads(line)
          except json.JSONDecodeError:
            row = None
          yield row if isinstance(row, dict) else {}


def _file_split(task: Task, path: str, label_optional: bool = False) -> Records:
  """A CSV / TSV / JSON-lines file; a test file may lack the label column."""
  rows = _file_rows(path, task.source)
  header = next(rows)
  if header is not None:
    wanted = [task.text_field, task.text_pair_field, task.label_field]
    missing = [c for c in wanted if c and c not in header]
    if missing and not (missing == [task.label_field] and label_optional):
      raise DataError(f"{path} has no column {missing[0]!r} (columns: {header}); name the "
                      "columns with classify.text_field / text_pair_field / label_field")
  out = Records([], [] if task.text_pair_field else None, [], where=path)
  for number, row in enumerate(rows):
    _add(out, row, task, number)
  return out


def decoded(value) -> str | None:
  """A TFDS or JSON field as text: a numpy scalar unwrapped, bytes decoded (bad bytes
  replaced); None when it is not text."""
  if isinstance(value, np.ndarray) and value.shape == ():
    value = value.item()
  if isinstance(value, bytes):
    value = value.decode("utf-8", errors="replace")
  return value if isinstance(value, str) else None


def nonblank_text(value) -> str | None:
  """decoded(value), None when blank too."""
  value = decoded(value)
  return value if value and value.strip() else None


def _add(out: Records, row: dict, task: Task, position: int) -> None:
  """Appends one record, or counts it as skipped (no text)."""
  text = nonblank_text(row.get(task.text_field))
  pair = nonblank_text(row.get(task.text_pair_field)) if task.text_pair_field else ""
  if text is None or pair is None:
    out.skipped += 1
    return
  label = row.get(task.label_field)
  if isinstance(label, np.ndarray):
    label = label.item()
  record_id = row.get("idx")
  try:
    record_id = int(record_id.item() if isinstance(record_id, np.ndarray) else record_id)
  except (TypeError, ValueError):
    record_id = position
  out.texts.append(text)
  if out.pairs is not None:
    out.pairs.append(pair)
  out.labels.append(label)
  out.ids.append(record_id)


def _builtin_splits() -> dict[str, Records]:
  """The built-in task: sentence pairs from the built-in corpus. Label 1: B is the sentence after
  A; 0: B is a sentence of another docstring of the same split. A docstring goes to validation
  or test (one in ten each) by a hash of its text, and pairs whose first sentence occurs in an
  earlier split are dropped (the standard library repeats some docstrings): no sentence is seen
  in two splits as A. Fixed (seed 0), so every run sees the same dataset."""
  docs = builtin_tasks.document_splits()
  out, seen = {}, set()
  for split, name in ((TRAIN, "train"), (EVAL, "validation"), (TEST, "test")):
    mine = [d for d in docs[name] if len(d) > 1]
    rng = np.random.default_rng(0)
    records = Records([], [], [], where=f"builtin[{split}]")
    for i, doc in enumerate(mine):
      for k in range(len(doc) - 1):
        if rng.random() < 0.5:
          b, label = doc[k + 1], 1
        else:
          other = mine[(i + 1 + int(rng.integers(len(mine) - 1))) % len(mine)]
          b, label = other[int(rng.integers(len(other)))], 0
        if doc[k] in seen:
          continue
        records.texts.append(doc[k])
        records.pairs.append(b)
        records.labels.append(label)
        records.ids.append(len(records.ids))
    seen.update(records.texts)
    out[split] = records
  return out


def read_splits(config) -> tuple[Task, dict[str, Records], tuple[str, ...]]:
  """The records of the train, eval and (when the task has one) test splits."""
  task = task_of(config)
  ft = config.finetune
  if task.source == "builtin":
    return task, _builtin_splits(), task.label_names
  if task.source == "tfds":
    out, names = {}, task.label_names
    for split, name in ((TRAIN, task.train_split), (EVAL, task.eval_split),
                        (TEST, task.test_split)):
      if name:
        out[split], found = _tfds_split(task, name, ft.tfds_data_dir)
        names = names or found
    return task, out, names
  out = {TRAIN: _file_split(task, ft.train_path)}
  if ft.eval_path:
    out[EVAL] = _file_split(task, ft.eval_path)
  else:
    out[TRAIN], out[EVAL] = _hold_out(out[TRAIN], config.data.eval_fraction)
  if ft.test_path:
    out[TEST] = _file_split(task, ft.test_path, label_optional=True)
  return task, out, task.label_names


def _hold_out(records: Records, fraction: float) -> tuple[Records, Records]:
  """Every k-th record of the train file for validation (deterministic)."""
  every = max(2, round(1 / max(fraction, 1e-9)))
  n = len(records.texts)
  if n < 4:
    raise DataError(f"{records.where} holds {n} usable records: too few to hold any out for "
                    "validation; give finetune.eval_path")
  held = [i % every == every - 1 for i in range(n)]

  def pick(want):
    idx = [i for i in range(n) if held[i] == want]
    return Records([records.texts[i] for i in idx],
                   None if records.pairs is None else [records.pairs[i] for i in idx],
                   [records.labels[i] for i in idx], 0, records.where,
                   [records.ids[i] for i in idx])

  train, evaluation = pick(False), pick(True)
  train.skipped = records.skipped
  return train, evaluation


# --- labels ----------------------------------------------------------------------------------------

def _as_number(value):
  if isinstance(value, (bool, np.bool_)):
    return int(value)
  if isinstance(value, (int, float, np.integer, np.floating)):
    return value
  if isinstance(value, str):
    try:
      return float(value) if any(c in value for c in ".eE") else int(value)
    except ValueError:
      return None
  return None


def _class_key(value) -> str | None:
  """The class a raw label names: integers in any spelling (1, "1", 1.0) alike; None if empty."""
  if value is None or (isinstance(value, str) and not value.strip()):
    return None
  number = _as_number(value)
  if number is not None and float(number).is_integer():
    return str(int(number))
  return str(value).strip()


def resolve_labels(task: Task, splits: dict[str, Records], names: tuple[str, ...]
                   ) -> tuple[int, tuple[str, ...]]:
  """The number of outputs and the class names (the class of id i is names[i]).

  From the task if it names its classes; else from the labels of the train and validation
  splits: integers 0..K-1 are their own ids, anything else (strings, or integers such as
  ratings 1..5) become classes sorted by name (integers numerically), so the same files always
  give the same ids and no class is left empty."""
  if task.num_classes == 1:
    return 1, ()
  if not names:
    seen = {s: [k for k in map(_class_key, splits[s].labels) if k not in (None, "-1")]
            for s in (TRAIN, EVAL) if s in splits}
    keys = {k for s in seen.values() for k in s}
    unseen = sorted(keys - set(seen[TRAIN]))
    if unseen and EVAL in splits:
      count = sum(k in unseen for k in seen[EVAL])
      raise DataError(f"{splits[EVAL].where}: the label(s) {', '.join(map(repr, unseen[:5]))} "
                      f"({count} record(s)) never appear in the training records of "
                      f"{splits[TRAIN].where}: the model would get a class it never saw in "
                      "training; fix the labels, or add training records of that class")
    if not all(k.isdigit() for k in keys):
      names = tuple(sorted(keys))                                  # strings
    elif sorted(map(int, keys)) != list(range(len(keys))):
      names = tuple(map(str, sorted(map(int, keys))))              # e.g. ratings 1..5
    else:
      names = tuple(map(str, range(task.num_classes or len(keys))))   # ids 0..K-1
  num = task.num_classes or len(names)
  if num < 2:
    raise DataError(f"{splits[TRAIN].where}: the labels give {num} class(es); a classifier "
                    "needs 2 or more (or set --config.classify.num_classes=1 for regression)")
  return num, names


def label_array(records: Records, regression: bool, num_classes: int,
                names: tuple[str, ...], split: str) -> tuple[np.ndarray, np.ndarray]:
  """(labels, usable) for one split. A missing label (GLUE's -1, an empty cell) is UNLABELED
  (NaN for regression). A label that names no class makes the record unusable in train and
  validation (skipped, counted), and unlabelled in test (a placeholder such as "?")."""
  index = {n: i for i, n in enumerate(names)}
  # Names that are numbers ("1".."5" of ratings) are the labels themselves, never ids.
  numeric_names = bool(names) and all(n.isdigit() for n in names)
  labels, usable = [], []
  for value in records.labels:
    key = _class_key(value)
    if key is None or (key == "-1" and "-1" not in index):
      labels.append(np.nan if regression else UNLABELED)
      usable.append(True)
      continue
    if regression:
      number = _as_number(value)
      labels.append(float(number) if number is not None else np.nan)
      usable.append(number is not None or split == TEST)
      continue
    if key in index:              # a class name (or a rating that names its class)
      known, label = True, index[key]
    else:                         # a class id: TFDS ClassLabels, 0..K-1 in files
      known = key.isdigit() and int(key) < num_classes and not numeric_names
      label = int(key) if known else UNLABELED
    labels.append(label)
    usable.append(known or split == TEST)
  dtype = np.float32 if regression else np.int32
  return np.asarray(labels, dtype), np.asarray(usable, bool)


def is_labeled(labels: np.ndarray) -> np.ndarray:
  return ~np.isnan(labels) if labels.dtype.kind == "f" else labels != UNLABELED


# --- encoding --------------------------------------------------------------------------------------

def _layout(tok: TextTokenizer, family: str, pair: bool) -> tuple[list, list, list, int,
                                                                 int | None]:
  """(prefix, middle, suffix) special ids around a / b, b's segment id and the last token's
  (None: its text's): the family's pair layout (plm_jax/families.py) in this tokenizer's ids."""
  layout = families.get(family).pair_layout
  ids = lambda roles: [tok.role_id(r) for r in roles]  # noqa: E731
  return ids(layout.prefix), ids(layout.middle) if pair else [], ids(layout.suffix), \
      layout.b_segment, layout.last_segment


def truncate_longest_first(a: list[int], b: list[int] | None, budget: int) -> bool:
  """Drops tokens from the end of the longer text until both fit; True if anything went."""
  b = b if b is not None else []
  cut = False
  while len(a) + len(b) > budget:
    cut = True
    if len(a) >= len(b):
      a.pop()
    else:
      b.pop()
  return cut


def encode(tok: TextTokenizer, family: str, texts: list[str], pairs: list[str] | None,
           max_seq_length: int) -> tuple[dict[str, np.ndarray], int]:
  """Texts (and pairs) -> input_ids, segment_ids, attention_mask; and how many were cut."""
  prefix, middle, suffix, b_segment, last_segment = _layout(tok, family, pairs is not None)
  overhead = len(prefix) + len(middle) + len(suffix)
  if max_seq_length <= overhead:
    raise DataError(f"data.max_seq_length={max_seq_length} leaves no room for text")
  a_ids = tok.encode_batch(texts) if texts else []
  b_ids = tok.encode_batch(pairs) if pairs else [None] * len(a_ids)
  n = len(a_ids)
  input_ids = np.full((n, max_seq_length), tok.pad_id, np.int32)
  segment_ids = np.zeros((n, max_seq_length), np.int32)
  attention_mask = np.zeros((n, max_seq_length), np.int32)
  truncated = 0
  for r, (a, b) in enumerate(zip(a_ids, b_ids)):
    truncated += truncate_longest_first(a, b, max_seq_length - overhead)
    first = prefix + a + middle
    ids = first + (b or []) + suffix
    input_ids[r, :len(ids)] = ids
    attention_mask[r, :len(ids)] = 1
    if b is not None:
      segment_ids[r, len(first):len(ids)] = b_segment
    if last_segment is not None:
      segment_ids[r, len(ids) - 1] = last_segment
  return {"input_ids": input_ids, "segment_ids": segment_ids,
          "attention_mask": attention_mask}, truncated


def load(config, tokenizer: TextTokenizer) -> ClassifyData:
  """Reads, labels and encodes every split of the config's task."""
  task, splits, names = read_splits(config)
  if not splits[TRAIN].texts:
    raise DataError(f"{splits[TRAIN].where} holds no usable records ({splits[TRAIN].skipped} "
                    f"skipped): check classify.text_field={task.text_field!r}")
  num_classes, names = resolve_labels(task, splits, names)
  arrays, labeled, skipped, truncated, where, ids = {}, {}, {}, {}, {}, {}
  for split, records in splits.items():
    labels, usable = label_array(records, num_classes == 1, num_classes, names, split)
    if split != TEST:
      usable &= is_labeled(labels)      # train / validation rows must carry a label
    keep = np.flatnonzero(usable)
    texts = [records.texts[i] for i in keep]
    pairs = None if records.pairs is None else [records.pairs[i] for i in keep]
    encoded, cut = encode(tokenizer, config.model.family, texts, pairs,
                          config.data.max_seq_length)
    labels = labels[keep]
    encoded["labels"] = labels
    # the row in the split's arrays; ids maps it back to the record's id for predictions
    encoded["example_index"] = np.arange(len(keep), dtype=np.int32)
    ids[split] = np.asarray(records.ids, np.int64)[keep]
    arrays[split] = encoded
    labeled[split] = bool(np.any(is_labeled(labels)))
    skipped[split] = records.skipped + int(len(usable) - len(keep))
    truncated[split] = cut
    where[split] = records.where
  for split in (TRAIN, EVAL):
    if split_size(arrays[split]) == 0:
      raise DataError(f"{where[split]} holds no labelled records ({skipped[split]} skipped: no "
                      "text, or no label that names a class); check classify.text_field / "
                      "label_field")

  return ClassifyData(tokenizer, arrays, num_classes, names, labeled, skipped, truncated, where,
                      ids)


def split_size(arrays: dict[str, np.ndarray]) -> int:
  return len(arrays["input_ids"])
