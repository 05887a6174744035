"""The downstream tasks made from the built-in corpus (plm_jax/data/builtin_tasks.py): each
property checked against the corpus itself, not against what the module computes."""

import collections
import json
import re

import numpy as np
import pytest

from plm_jax.compare import baseline
from plm_jax.data import builtin_tasks as bt


@pytest.fixture(scope="module")
def splits():
  return bt.document_splits()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("tasks"))
  return bt.write_builtin_tasks(out)


def _bag(sentence: str) -> collections.Counter:
  """The sentence's words, case-blind, without punctuation at their ends (a shuffle moves the
  sentence's last word, and its own punctuation with it, away from the end)."""
  words = (re.sub(r"[.!?:;,\"')]+$", "", w.lower()) for w in sentence.split())
  return collections.Counter(w for w in words if w)


def _read_jsonl(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_shuffled_keeps_the_words_and_the_sentence_shape():
  rng = np.random.default_rng(0)
  for sentence in ("Return the number of items in the queue.", "Close the file!",
                   "ABC helpers for abstract classes"):
    mixed = bt.shuffled(sentence, rng)
    assert mixed != sentence and _bag(mixed) == _bag(sentence)
    assert mixed[0].isupper() and mixed[-1] in ".!s"
    assert mixed.endswith(sentence[-1]) or sentence[-1].isalpha()
  assert bt.shuffled("Again again.", rng) is None       # every order is the same


def test_splits_are_by_docstring_and_share_no_sentence(splits, written):
  assert len(splits["train"]) > 5 * len(splits["test"]) > 0
  by_split = {s: {r["text"] for r in _read_jsonl(written["word_order"][s])}
              for s in bt.SPLITS}
  for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
    assert not by_split[a] & by_split[b], (a, b)
  targets = {s: {r["target"] for r in _read_jsonl(written["unshuffle"][s])} for s in bt.SPLITS}
  assert not targets["train"] & targets["test"]
  contexts = {s: _cloze_contexts(written["cloze"][s]) for s in bt.SPLITS}
  for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
    assert not contexts[a] & contexts[b], (a, b)


def _cloze_contexts(path) -> set:
  with open(path, encoding="utf-8") as f:
    return {p["context"] for p in json.load(f)["data"][0]["paragraphs"]}


def test_pretraining_text_holds_no_sentence_the_tasks_test_on(tmp_path, written):
  path = bt.write_pretraining_text(str(tmp_path))
  with open(path, encoding="utf-8") as f:
    text = f.read()
  sentences = set(text.split("\n")) - {""}
  assert len(sentences) > 3000
  for split in ("validation", "test"):
    originals = [r["text"] for r in _read_jsonl(written["word_order"][split])
                 if r["label"] == "original"]
    assert originals and not sentences & set(originals), split
    assert not sentences & {r["target"] for r in _read_jsonl(written["unshuffle"][split])}
    for context in _cloze_contexts(written["cloze"][split]):
      assert context.split(". ")[0] not in text, context
  # what is left is the train split's docstrings, whole
  train = {s for doc in bt.document_splits()["train"] for s in doc}
  assert sentences == train


def test_word_order_classes_differ_only_in_order(splits, written):
  corpus = {s for docs in splits.values() for d in docs for s in d}
  bags = {frozenset(_bag(s).items()) for s in corpus}
  records = _read_jsonl(written["word_order"]["train"])
  labels = collections.Counter(r["label"] for r in records)
  assert set(labels) == {"original", "shuffled"}
  assert abs(labels["original"] - labels["shuffled"]) < 0.06 * len(records), labels
  for r in records:
    # every text is a corpus sentence (original) or another order of one (shuffled)
    assert (r["text"] in corpus) == (r["label"] == "original"), r
    assert frozenset(_bag(r["text"]).items()) in bags, r
  # neither a capital first letter nor a final full stop tells the classes apart
  for cue in (lambda t: t[0].isupper(), lambda t: t.endswith(".")):
    rate = {label: np.mean([cue(r["text"]) for r in records if r["label"] == label])
            for label in labels}
    assert abs(rate["original"] - rate["shuffled"]) < 0.03, rate


def test_cloze_answers_are_the_blanked_words_of_the_context(written):
  with open(written["cloze"]["validation"], encoding="utf-8") as f:
    data = json.load(f)
  ids = []
  for paragraph in data["data"][0]["paragraphs"]:
    context = paragraph["context"]
    for qa in paragraph["qas"]:
      ids.append(qa["id"])
      (answer,) = qa["answers"]
      start, text = answer["answer_start"], answer["text"]
      assert context[start:start + len(text)] == text and text.isalpha() and len(text) >= 4
      assert qa["question"].count(bt.BLANK) == 1
      filled = qa["question"].replace(bt.BLANK, text)
      # the question is the context's sentence that holds the answer, one word blanked
      at = context.find(filled)
      assert at >= 0 and at < start < at + len(filled), qa
  assert len(ids) == len(set(ids)) > 100


def test_unshuffle_sources_hold_the_targets_words(written):
  records = _read_jsonl(written["unshuffle"]["test"])
  assert len(records) > 100
  for r in records:
    assert r["source"] != r["target"] and _bag(r["source"]) == _bag(r["target"])
    assert 4 <= len(r["target"].split()) <= 12


def test_the_files_are_the_same_on_every_run(tmp_path, written):
  again = bt.write_builtin_tasks(str(tmp_path))
  for task, paths in written.items():
    for split, path in paths.items():
      with open(path, "rb") as a, open(again[task][split], "rb") as b:
        assert a.read() == b.read(), (task, split)


def test_baselines_score_what_learning_nothing_scores(written):
  copied = baseline("unshuffle", written["unshuffle"]["test"])
  # the copy holds every word of the target (ROUGE-1 100) but never in its order
  assert copied["rouge1"] == pytest.approx(100.0) and copied["exact_match"] == 0.0
  assert 0 < copied["bleu"] < 50
  guessed = baseline("cloze", written["cloze"]["test"])
  assert guessed["f1"] == pytest.approx(guessed["exact_match"])   # one word against one word
  assert 0 < guessed["exact_match"] < 50
  labels = [r["label"] for r in _read_jsonl(written["word_order"]["test"])]
  majority = baseline("word_order", written["word_order"]["test"])["accuracy"]
  assert majority == max(labels.count("original"), labels.count("shuffled")) / len(labels)


def test_a_cap_keeps_the_first_examples_of_each_split(tmp_path, written):
  capped = bt.write_builtin_tasks(str(tmp_path), limit=10)
  assert _read_jsonl(capped["word_order"]["test"]) == _read_jsonl(written["word_order"]["test"])[:10]
  with open(capped["cloze"]["train"], encoding="utf-8") as f:
    questions = [q for p in json.load(f)["data"][0]["paragraphs"] for q in p["qas"]]
  assert 10 <= len(questions) < 20                  # whole paragraphs, up to the tenth question
