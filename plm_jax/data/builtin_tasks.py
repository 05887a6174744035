"""Downstream tasks made from the built-in corpus: they need no download, and a tiny model can
learn them in a few hundred steps, but only by reading word order, which pretraining teaches.

- `word_order` (classification, JSON lines `text`, `label`): is the sentence as written
  (`original`) or are its words shuffled (`shuffled`)? The two classes hold the same words, so
  a bag of words scores 50%: only the order tells them apart (the probing task of Conneau et
  al., 2018, with a whole shuffle instead of one swapped pair).
- `cloze` (extractive question answering, SQuAD-format JSON): the context is a docstring's
  first sentences, the question one of them with a word replaced by `____`, the answer that
  word in the context. Finding it means aligning the question with the context.
- `unshuffle` (generation, JSON lines `source`, `target`): the target is a sentence, the source
  its words shuffled: putting them back in order is language modelling conditioned on a bag of
  words, scored with BLEU.

Sentences keep their final punctuation last and, when they have one, their first word's
capital first, shuffled or not, so neither tells the classes apart. Splits are by docstring (a
hash of its text: one in ten to validation, one in ten to test, as the built-in classification
task's), a sentence seen in an earlier split is left out of later ones, and everything is drawn
with a fixed seed: every machine writes the same files.
"""

import json
import os
import re
import zlib

import numpy as np

from plm_jax.data import sources
from plm_jax.data.builtin_corpus import read_builtin_text

SPLITS = ("train", "validation", "test")
BLANK = "____"
# the sentence's end: its final punctuation with any closing quotes or parenthesis after it
# (not "]": "maps[1:]" ends in a slice, not in a colon)
_END = re.compile(r"[.!?:;][\"')]*$")


def document_splits() -> dict[str, list[list[str]]]:
  """The built-in corpus's documents (lists of sentences) by split: a docstring goes to
  validation or test (one in ten each) by a hash of its text, the rest to train."""
  docs = sources.parse_documents(read_builtin_text())
  out = {split: [] for split in SPLITS}
  for doc in docs:
    bucket = zlib.crc32("\n".join(doc).encode("utf-8")) % 10
    out["train" if bucket < 8 else SPLITS[bucket - 7]].append(doc)
  return out


def _words(sentence: str) -> tuple[list[str], str, bool]:
  """The sentence's words with the first one's capital undone, its final punctuation, and
  whether it started with a capital."""
  end = _END.search(sentence)
  body = sentence[:end.start()] if end else sentence
  words = body.split()
  capital = bool(words) and words[0][:1].isupper()
  # a capital that only starts the sentence ("The", "A"; not "ABC", "Python's" stays too) is
  # undone, so that a shuffle puts no capitalised "The" in the middle
  if capital and (words[0][1:].islower() or words[0] == "A"):
    words[0] = words[0].lower()
  return words, end.group() if end else "", capital


def _sentence(words: list[str], end: str, capital: bool) -> str:
  first = words[0][:1].upper() + words[0][1:] if capital else words[0]
  return " ".join([first, *words[1:]]) + end


def shuffled(sentence: str, rng: np.random.Generator) -> str | None:
  """The sentence with its words in another order (None when every order is the same)."""
  words, end, capital = _words(sentence)
  if len(set(words)) < 2:
    return None
  while True:
    order = [words[i] for i in rng.permutation(len(words))]
    if order != words:
      return _sentence(order, end, capital)


def _usable(sentence: str, min_words: int, max_words: int) -> bool:
  n = len(sentence.split())
  return min_words <= n <= max_words and not any(c in sentence for c in "_\t")


def _unique_sentences(splits: dict, min_words: int, max_words: int) -> dict[str, list[str]]:
  """The usable sentences of each split, none repeated within or across splits."""
  seen, out = set(), {}
  for split in SPLITS:
    out[split] = []
    for doc in splits[split]:
      for s in doc:
        if s not in seen and _usable(s, min_words, max_words):
          seen.add(s)
          out[split].append(s)
  return out


def word_order_records(splits: dict, seed: int = 0) -> dict[str, list[dict]]:
  """Each sentence once, as written or shuffled (a fair coin), labelled."""
  rng = np.random.default_rng(seed)
  out = {}
  for split, sentences in _unique_sentences(splits, 4, 16).items():
    out[split] = []
    for s in sentences:
      mixed = shuffled(s, rng)
      if mixed is None:
        continue
      original = rng.random() < 0.5
      out[split].append({"text": s if original else mixed,
                         "label": "original" if original else "shuffled"})
  return out


def unshuffle_records(splits: dict, seed: int = 1) -> dict[str, list[dict]]:
  rng = np.random.default_rng(seed)
  out = {}
  for split, sentences in _unique_sentences(splits, 4, 12).items():
    out[split] = [{"source": mixed, "target": s} for s in sentences
                  if (mixed := shuffled(s, rng)) is not None]
  return out


def cloze_records(splits: dict, seed: int = 2, max_context_words: int = 60) -> dict[str, dict]:
  """SQuAD-format data: one paragraph per docstring (its first sentences, up to
  max_context_words words), one question per sentence of it that has a word to blank (a word
  of letters, four or more, after the first)."""
  rng = np.random.default_rng(seed)
  out, seen = {}, set()
  for split in SPLITS:
    paragraphs, earlier = [], set(seen)
    for d, doc in enumerate(splits[split]):
      context, starts = "", []
      for s in doc:
        if len((context + " " + s).split()) > max_context_words:
          break
        starts.append(len(context) + (1 if context else 0))
        context = f"{context} {s}" if context else s
      if any(sentence in earlier for sentence in doc[:len(starts)]):
        continue            # the standard library repeats docstrings: none seen before
      seen.update(doc[:len(starts)])
      qas = []
      for k, start in enumerate(starts):
        sentence = doc[k]
        spans = [(m.start(), m.group()) for m in re.finditer(r"[A-Za-z]{4,}", sentence)
                 if m.start() > 0 and sentence[m.start() - 1] == " "
                 and (m.end() == len(sentence) or not sentence[m.end()].isalnum())]
        if not spans:
          continue
        offset, word = spans[int(rng.integers(len(spans)))]
        question = sentence[:offset] + BLANK + sentence[offset + len(word):]
        qas.append({"id": f"{split}-{d}-{k}", "question": question,
                    "answers": [{"text": word, "answer_start": start + offset}]})
      if qas:
        paragraphs.append({"context": context, "qas": qas})
    out[split] = {"version": "plm-jax-cloze", "data": [{"title": f"builtin-{split}",
                                                        "paragraphs": paragraphs}]}
  return out


def _write_jsonl(path: str, records: list[dict]) -> None:
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  os.replace(path + ".tmp", path)


def _write_json(path: str, data: dict) -> None:
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(data, f)
  os.replace(path + ".tmp", path)


TASK_FILES = {"word_order": "jsonl", "cloze": "json", "unshuffle": "jsonl"}
# what each task asks, in a line (compare's report says it under the task's results)
ABOUT = {
    "word_order": "a built-in sentence as written or with its words shuffled (chance: 0.5; "
                  "the classes hold the same words)",
    "cloze": "find the word blanked out of a question (one of the context's sentences) in "
             "the context: a docstring's first sentences",
    "unshuffle": "write a built-in sentence back in order from its shuffled words (BLEU "
                 "against the sentence)",
}


def task_paths(out_dir: str) -> dict[str, dict[str, str]]:
  """{task: {split: path}} of the files write_builtin_tasks writes under out_dir."""
  return {task: {split: os.path.join(out_dir, task, f"{split}.{ext}") for split in SPLITS}
          for task, ext in TASK_FILES.items()}


# --- what a model that learned nothing scores (compare's report prints it under the scores) ---

BASELINES = {
    "word_order": "the majority class",
    "cloze": "a random word of four or more letters of the context",
    "unshuffle": "the shuffled source copied as it is",
}


PRETRAIN_FILE = "pretrain_corpus.txt"


def write_pretraining_text(out_dir: str) -> str:
  """The built-in corpus without the docstrings of the tasks' validation and test splits (one
  sentence a line, a blank line between documents: a `text` source), so that no model is
  pretrained on the sentences it is tested on; returns its path."""
  path = os.path.join(out_dir, PRETRAIN_FILE)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write("\n\n".join("\n".join(doc) for doc in document_splits()["train"]) + "\n")
  os.replace(path + ".tmp", path)
  return path


def _first_questions(data: dict, limit: int) -> dict:
  """The SQuAD-format data cut to its paragraphs up to the first `limit` questions."""
  kept, count = [], 0
  for paragraph in data["data"][0]["paragraphs"]:
    if count >= limit:
      break
    kept.append(paragraph)
    count += len(paragraph["qas"])
  return {**data, "data": [{**data["data"][0], "paragraphs": kept}]}


def write_builtin_tasks(out_dir: str, limit: int = 0) -> dict[str, dict[str, str]]:
  """Writes the three tasks' splits under out_dir (TASK/SPLIT.jsonl or .json, each written
  whole then renamed; limit > 0: about the first `limit` examples of each split, for quick
  runs); returns task_paths(out_dir)."""
  splits = document_splits()
  paths = task_paths(out_dir)
  for task, records, write in (("word_order", word_order_records(splits), _write_jsonl),
                               ("cloze", cloze_records(splits), _write_json),
                               ("unshuffle", unshuffle_records(splits), _write_jsonl)):
    os.makedirs(os.path.join(out_dir, task), exist_ok=True)
    for split in SPLITS:
      kept = records[split]
      if limit:
        kept = _first_questions(kept, limit) if task == "cloze" else kept[:limit]
      write(paths[task][split], kept)
  return paths
