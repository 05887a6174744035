"""Question-answering examples: SQuAD records -> windows of token ids, and logits -> answers.

Sources: TFDS `squad/v1.1` / `squad/v2.0` (or any dataset with SQuAD's fields: id, question,
context, answers {text, answer_start}, is_impossible) read with `tfds.data_source`, or local
SQuAD-format JSON ({"data": [{"paragraphs": [{"context", "qas": [{"id", "question", "answers",
"is_impossible"}]}]}]}).

Windows, as BERT's run_squad.py: the question (at most qa.max_query_length tokens) and a window
of the context in the family's pair layout (plm_jax/families.py; BERT: [CLS] q [SEP] c [SEP]);
a context longer than a window is read in windows that start qa.doc_stride tokens apart. The
tokenizer's character offsets map every context token back to the text. Training labels: the
answer's first and last token when the window holds the whole answer, else (and for an
unanswerable question) the null position, the [CLS] token (XLNet's <cls>, last of its layout).
An answer is chosen across all windows of a question: the best start + end logit of a valid span
(in the context, end >= start, at most qa.max_answer_length tokens, its start read in the window
where it has the most context); with unanswerable questions, no answer when the null score
(start + end logit of the null position; the lowest over the windows, as transformers' run_qa)
beats the best span by more than qa.null_score_diff_threshold.
"""

import dataclasses
import json
import os

import numpy as np

from plm_jax import families
from plm_jax.data.sources import open_tfds
from plm_jax.data.tokenizer import TextTokenizer
from plm_jax.errors import DataError
from plm_jax.finetune.classify.data import EVAL, TEST, TRAIN, decoded
from plm_jax.finetune.qa.tasks import QATask, qa_task_of


@dataclasses.dataclass
class QAExample:
  id: str
  question: str
  context: str
  answers: list[str]                   # gold answer texts (none: unanswerable or hidden)
  starts: list[int]                    # their character offsets in the context


@dataclasses.dataclass
class QASplit:
  examples: list[QAExample]
  skipped: int = 0
  where: str = ""


@dataclasses.dataclass
class Windows:
  """The windows of one split: model inputs and labels (`arrays`) and, for reading answers back,
  per window its example, the character span of each context token ([-1, -1] elsewhere),
  whether the token has its most context in this window, and the null position."""
  arrays: dict[str, np.ndarray]
  example: np.ndarray                  # [W] index of the window's example
  chars: np.ndarray                    # [W, T, 2] int32
  max_context: np.ndarray              # [W, T] bool
  null_position: np.ndarray            # [W]
  cut_questions: int = 0


@dataclasses.dataclass
class QAData:
  tokenizer: TextTokenizer
  task: QATask
  splits: dict[str, dict[str, np.ndarray]]      # TRAIN, EVAL, (TEST): the loader's arrays
  windows: dict[str, Windows]
  examples: dict[str, list[QAExample]]
  labeled: dict[str, bool]                      # do the split's questions carry answers?
  skipped: dict[str, int]
  descriptions: dict[str, str]


# --- reading -------------------------------------------------------------------------------------

def _text(value) -> str:
  return decoded(value) or ""


def _example(qid, question, context, texts, starts, impossible: bool) -> QAExample | None:
  """One record, or None when it lacks a question or a context."""
  question, context = _text(question), _text(context)
  if not question.strip() or not context.strip():
    return None
  texts = [] if impossible else [_text(t) for t in texts]
  starts = [] if impossible else [int(s) for s in starts]
  keep = [i for i, t in enumerate(texts) if t.strip()]
  return QAExample(_text(qid), question, context, [texts[i] for i in keep],
                   [starts[i] if i < len(starts) else -1 for i in keep])


def _tfds_split(task: QATask, split: str, data_dir: str) -> QASplit:
  source = open_tfds(task.tfds_name, split, data_dir)
  out = QASplit([], where=f"{task.tfds_name}[{split}]")
  for i in range(len(source)):
    row = source[i]
    answers = row.get("answers") or {}
    example = _example(row.get("id", str(i)), row.get("question"), row.get("context"),
                       list(answers.get("text", [])), list(answers.get("answer_start", [])),
                       bool(row.get("is_impossible", False)))
    _append(out, example)
  return out


def _append(out: QASplit, example: QAExample | None) -> None:
  if example is None:
    out.skipped += 1
  else:
    out.examples.append(example)


def _json_split(path: str) -> QASplit:
  """A SQuAD-format JSON file."""
  if not os.path.isfile(path):
    raise DataError(f"{path} does not exist: give an existing SQuAD-format JSON file in "
                    "finetune.train_path / eval_path / test_path")
  try:
    with open(path, encoding="utf-8") as f:
      articles = json.load(f)["data"]
    paragraphs = [p for a in articles for p in a["paragraphs"]]
  except (ValueError, KeyError, TypeError) as e:
    raise DataError(f"{path} is not SQuAD-format JSON ({type(e).__name__}: {e}); it must hold "
                    '{"data": [{"paragraphs": [{"context": ..., "qas": [{"id", "question", '
                    '"answers": [{"text", "answer_start"}], "is_impossible"}]}]}]}') from None
  out = QASplit([], where=path)
  for number, paragraph in enumerate(paragraphs):
    for k, qa in enumerate(paragraph.get("qas", []) if isinstance(paragraph, dict) else []):
      if not isinstance(qa, dict):
        out.skipped += 1
        continue
      answers = [a for a in qa.get("answers", []) if isinstance(a, dict)]
      _append(out, _example(qa.get("id", f"{number}-{k}"), qa.get("question"),
                            paragraph.get("context"), [a.get("text") for a in answers],
                            [a.get("answer_start", -1) for a in answers],
                            bool(qa.get("is_impossible", False))))
  return out


def _hold_out(split: QASplit, fraction: float) -> tuple[QASplit, QASplit]:
  """Every k-th context's questions for validation (whole contexts: no context is seen in
  both)."""
  contexts = list(dict.fromkeys(e.context for e in split.examples))
  every = max(2, round(1 / max(fraction, 1e-9)))
  held = {c for i, c in enumerate(contexts) if i % every == every - 1}
  if not held:
    raise DataError(f"{split.where} holds {len(contexts)} context(s): too few to hold any out "
                    "for validation; give finetune.eval_path")
  train = QASplit([e for e in split.examples if e.context not in held], split.skipped,
                  split.where)
  return train, QASplit([e for e in split.examples if e.context in held], 0,
                        f"{split.where} (held out)")


def read_qa_splits(config) -> tuple[QATask, dict[str, QASplit]]:
  """The examples of the train, eval and (when the task has one) test splits."""
  task = qa_task_of(config)
  ft = config.finetune
  if task.source == "tfds":
    out = {split: _tfds_split(task, name, ft.tfds_data_dir)
           for split, name in ((TRAIN, task.train_split), (EVAL, task.eval_split),
                               (TEST, task.test_split)) if name}
  else:
    out = {TRAIN: _json_split(ft.train_path)}
    if ft.eval_path:
      out[EVAL] = _json_split(ft.eval_path)
    else:
      out[TRAIN], out[EVAL] = _hold_out(out[TRAIN], config.data.eval_fraction)
    if ft.test_path:
      out[TEST] = _json_split(ft.test_path)
  if not task.unanswerable:
    # SQuAD v1.1 tasks: every question has an answer; one without is unusable (counted), but
    # in a test file, where the answers may be hidden
    for name, split in out.items():
      kept = [e for e in split.examples if e.answers or name == TEST]
      split.skipped += len(split.examples) - len(kept)
      split.examples = kept
  return task, out


# --- windows -------------------------------------------------------------------------------------

def answer_tokens(offsets: np.ndarray, start_char: int, end_char: int) -> tuple[int, int] | None:
  """The first and last context token of the characters [start_char, end_char), or None."""
  if len(offsets) == 0:
    return None
  first = np.flatnonzero(offsets[:, 1] > start_char)
  last = np.flatnonzero(offsets[:, 0] < end_char)
  if not len(first) or not len(last) or first[0] > last[-1]:
    return None
  return int(first[0]), int(last[-1])


def aligned_answer(example: QAExample) -> tuple[int, int] | None:
  """The first answer's character span: at its answer_start if the text is there, else its
  occurrence nearest to it; None if the context does not hold it."""
  text, start = example.answers[0], example.starts[0]
  if example.context[start:start + len(text)] == text:
    return start, start + len(text)
  found, at = [], example.context.find(text)
  while at >= 0:
    found.append(at)
    at = example.context.find(text, at + 1)
  if not found:
    return None
  best = min(found, key=lambda i: abs(i - start))
  return best, best + len(text)


def window_starts(n: int, room: int, stride: int) -> list[tuple[int, int]]:
  """(start, length) of the windows over n context tokens, `room` tokens each, `stride` apart
  (the last one ends at the context's end)."""
  out, start = [], 0
  while True:
    length = min(n - start, room)
    out.append((start, length))
    if start + length >= n:
      return out
    start += min(length, stride)


def _most_context(windows: list[tuple[int, int]], n: int) -> np.ndarray:
  """[n] the window in which each context token has the most context on both sides (BERT's
  _check_is_max_context: min(left, right) + 0.01 x length; the first on ties)."""
  best, score = np.zeros(n, np.int64), np.full(n, -np.inf)
  for w, (start, length) in enumerate(windows):
    j = np.arange(start, start + length)
    s = np.minimum(j - start, start + length - 1 - j) + 0.01 * length
    better = s > score[j]
    best[j[better]], score[j[better]] = w, s[better]
  return best


def encode_windows(tok: TextTokenizer, family: str, examples: list[QAExample],
                   max_seq_length: int, max_query_length: int, doc_stride: int,
                   labels: bool) -> tuple[Windows, int]:
  """The windows of `examples` (with training labels when `labels`); and the number of
  examples whose answer could not be found in its context (no window of theirs is kept)."""
  layout = families.get(family).pair_layout
  ids = lambda roles: [tok.role_id(r) for r in roles]  # noqa: E731
  prefix, middle, suffix = ids(layout.prefix), ids(layout.middle), ids(layout.suffix)
  questions = tok.encode_batch([e.question for e in examples]) if examples else []
  contexts = tok.tokenizer.encode_batch([e.context for e in examples],
                                        add_special_tokens=False) if examples else []
  rows, meta, unaligned, cut = [], [], 0, 0
  for index, (example, q, c) in enumerate(zip(examples, questions, contexts)):
    cut += len(q) > max_query_length
    q = q[:max_query_length]
    offsets = np.asarray(c.offsets, np.int64).reshape(-1, 2)
    first = len(prefix) + len(q) + len(middle)      # the window's first context position
    room = max_seq_length - first - len(suffix)
    span = None
    if labels and example.answers:
      chars = aligned_answer(example)
      span = answer_tokens(offsets, *chars) if chars is not None else None
      if span is None:
        unaligned += 1
        continue
    windows = window_starts(len(c.ids), room, doc_stride)
    most = _most_context(windows, len(c.ids))
    for w, (start, length) in enumerate(windows):
      tokens = prefix + q + middle + c.ids[start:start + length] + suffix
      cls = layout.prefix.index("cls") if "cls" in layout.prefix else \
          len(tokens) - len(suffix) + layout.suffix.index("cls")
      positions = (cls, cls)
      if span is not None and start <= span[0] and span[1] < start + length:
        positions = (first + span[0] - start, first + span[1] - start)
      rows.append((tokens, first, positions, layout))
      meta.append((index, first, offsets[start:start + length],
                   most[start:start + length] == w, cls))
  n = len(rows)
  arrays = {"input_ids": np.full((n, max_seq_length), tok.pad_id, np.int32),
            "segment_ids": np.zeros((n, max_seq_length), np.int32),
            "attention_mask": np.zeros((n, max_seq_length), np.int32),
            "start_positions": np.zeros(n, np.int32), "end_positions": np.zeros(n, np.int32),
            "example_index": np.arange(n, dtype=np.int32)}
  chars = np.full((n, max_seq_length, 2), -1, np.int32)
  max_context = np.zeros((n, max_seq_length), bool)
  for r, ((tokens, first, positions, layout), (_, _, offs, most, _)) in enumerate(zip(rows,
                                                                                       meta)):
    arrays["input_ids"][r, :len(tokens)] = tokens
    arrays["attention_mask"][r, :len(tokens)] = 1
    arrays["segment_ids"][r, first:len(tokens)] = layout.b_segment
    if layout.last_segment is not None:
      arrays["segment_ids"][r, len(tokens) - 1] = layout.last_segment
    arrays["start_positions"][r], arrays["end_positions"][r] = positions
    chars[r, first:first + len(offs)] = offs
    max_context[r, first:first + len(offs)] = most
  return Windows(arrays, np.asarray([m[0] for m in meta], np.int64), chars, max_context,
                 np.asarray([m[4] for m in meta], np.int64), cut), unaligned


def load(config, tokenizer: TextTokenizer) -> QAData:
  """Reads and windows every split of the config's QA task."""
  task, splits = read_qa_splits(config)
  q = config.qa
  arrays, windows, examples, labeled, skipped, where = {}, {}, {}, {}, {}, {}
  for split, records in splits.items():
    w, unaligned = encode_windows(tokenizer, config.model.family, records.examples,
                                  config.data.max_seq_length, q.max_query_length, q.doc_stride,
                                  labels=split == TRAIN)
    arrays[split], windows[split] = w.arrays, w
    examples[split] = records.examples
    labeled[split] = any(e.answers for e in records.examples) or (
        task.unanswerable and split != TEST and bool(records.examples))
    skipped[split] = records.skipped + unaligned
    where[split] = records.where
  for split in (TRAIN, EVAL):
    if len(arrays[split]["input_ids"]) == 0:
      raise DataError(f"{where[split]} holds no usable questions ({skipped[split]} skipped: no "
                      "question or context, no answer in a SQuAD v1.1 task, or an answer not "
                      "found in its context); check the file, or use a *_v2 task for "
                      "unanswerable questions")
  return QAData(tokenizer, task, arrays, windows, examples, labeled, skipped, where)


# --- answers -------------------------------------------------------------------------------------

def best_answers(examples: list[QAExample], windows: Windows, start_logits: np.ndarray,
                 end_logits: np.ndarray, n_best: int, max_answer_length: int,
                 unanswerable: bool, threshold: float
                 ) -> tuple[dict[str, str], dict[str, str], dict[str, float]]:
  """(predictions, best spans, null-score diffs) by question id: the best valid span over all
  windows of each question; with `unanswerable`, "" where the null score beats it by more than
  `threshold`. start/end logits: [W, T] in window order."""
  best = {}                  # example index -> (score, text)
  null = {}                  # example index -> the lowest null score of its windows
  for w in range(len(windows.example)):
    index = int(windows.example[w])
    s, e = start_logits[w], end_logits[w]
    p = windows.null_position[w]
    null[index] = min(null.get(index, np.inf), float(s[p] + e[p]))
    in_context = windows.chars[w, :, 0] >= 0
    starts = _top(np.where(in_context & windows.max_context[w], s, -np.inf), n_best)
    ends = _top(np.where(in_context, e, -np.inf), n_best)
    if not len(starts) or not len(ends):
      continue
    length = ends[None, :] - starts[:, None] + 1
    scores = np.where((length >= 1) & (length <= max_answer_length),
                      s[starts][:, None] + e[ends][None, :], -np.inf)
    i, j = np.unravel_index(np.argmax(scores), scores.shape)
    if np.isfinite(scores[i, j]) and scores[i, j] > best.get(index, (-np.inf,))[0]:
      a, b = windows.chars[w, starts[i], 0], windows.chars[w, ends[j], 1]
      best[index] = (float(scores[i, j]), examples[index].context[a:b].strip())
  predictions, spans, diffs = {}, {}, {}
  for index, example in enumerate(examples):
    score, text = best.get(index, (-np.inf, ""))
    spans[example.id] = text
    diffs[example.id] = null.get(index, np.inf) - score if index in best else np.inf
    predictions[example.id] = "" if unanswerable and diffs[example.id] > threshold else text
  return predictions, spans, diffs


def _top(x: np.ndarray, n: int) -> np.ndarray:
  """Indices of the n largest finite values of x, largest first."""
  order = np.argsort(-x, kind="stable")[:n]
  return order[np.isfinite(x[order])]
