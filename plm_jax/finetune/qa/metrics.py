"""SQuAD's exact match and F1, as the official evaluation scripts compute them.

normalize_answer: lowercase, drop punctuation, drop the articles a / an / the, collapse
whitespace (the same in evaluate-v1.1.py and evaluate-v2.0.py). A prediction's score is its best
over the gold answers. v1.1 (every question answered): F1 of the token bags, 0 when they share
nothing. v2.0: gold answers that normalise to nothing are dropped and an unanswerable question's
only gold answer is "" (so F1 is 1 when both are empty, 0 when one is); the totals are split into
HasAns / NoAns, and `best_thresholds` sweeps the no-answer threshold as the v2.0 script does with
its na_prob file. Scores are percentages, as the scripts print them.
"""

import collections
import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(s: str) -> str:
  """Lower text and remove punctuation, articles and extra whitespace (SQuAD's)."""
  s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
  return " ".join(_ARTICLES.sub(" ", s).split())


def exact(gold: str, prediction: str) -> float:
  return float(normalize_answer(gold) == normalize_answer(prediction))


def f1(gold: str, prediction: str, v2: bool = True) -> float:
  gold_tokens = normalize_answer(gold).split()
  pred_tokens = normalize_answer(prediction).split()
  if v2 and (not gold_tokens or not pred_tokens):
    return float(gold_tokens == pred_tokens)     # v2.0: agreeing on "no answer" scores 1
  same = sum((collections.Counter(gold_tokens) & collections.Counter(pred_tokens)).values())
  if same == 0:
    return 0.0
  precision, recall = same / len(pred_tokens), same / len(gold_tokens)
  return 2 * precision * recall / (precision + recall)


def gold_answers(answers: list[str], v2: bool) -> list[str]:
  """The answers a prediction is scored against: v2.0 drops those that normalise to nothing and
  scores an unanswerable question against ""."""
  if not v2:
    return list(answers)
  return [a for a in answers if normalize_answer(a)] or [""]


def raw_scores(golds: dict[str, list[str]], predictions: dict[str, str], v2: bool
               ) -> tuple[dict[str, float], dict[str, float]]:
  """(exact, f1) per question id, each the best over its gold answers."""
  exact_scores, f1_scores = {}, {}
  for qid, answers in golds.items():
    pred = predictions.get(qid, "")
    gold = gold_answers(answers, v2)
    exact_scores[qid] = max(exact(a, pred) for a in gold) if gold else 0.0
    f1_scores[qid] = max(f1(a, pred, v2) for a in gold) if gold else 0.0
  return exact_scores, f1_scores


def squad_metrics(golds: dict[str, list[str]], predictions: dict[str, str], v2: bool) -> dict:
  """{"exact_match", "f1", "total"} and, for v2.0, the same over the answerable (HasAns_*) and
  the unanswerable (NoAns_*) questions."""
  exact_scores, f1_scores = raw_scores(golds, predictions, v2)

  def mean(scores, ids):
    return 100.0 * sum(scores[i] for i in ids) / len(ids) if ids else 0.0

  ids = list(golds)
  out = {"exact_match": mean(exact_scores, ids), "f1": mean(f1_scores, ids), "total": len(ids)}
  if v2:
    # answered or not as the data says (the script's qid_to_has_ans: any gold answer at all)
    for name, part in (("HasAns", [i for i in ids if golds[i]]),
                       ("NoAns", [i for i in ids if not golds[i]])):
      if part:
        out.update({f"{name}_exact_match": mean(exact_scores, part),
                    f"{name}_f1": mean(f1_scores, part), f"{name}_total": len(part)})
  return out


def best_thresholds(golds: dict[str, list[str]], answers: dict[str, str],
                    null_diffs: dict[str, float]) -> dict:
  """The no-answer threshold that would score best (evaluate-v2.0.py's find_best_thresh):
  `answers` are the predictions as written ("" where the null won), `null_diffs` the null
  score minus the best span's score; a question is predicted unanswerable when its diff exceeds
  the threshold."""
  exact_scores, f1_scores = raw_scores(golds, answers, True)
  has_answer = {i: bool(g) for i, g in golds.items()}
  out = {}
  for name, scores in (("exact_match", exact_scores), ("f1", f1_scores)):
    # every question predicted unanswerable, then answered in order of increasing diff
    score = best = float(sum(not h for h in has_answer.values()))
    threshold = 0.0
    for qid in sorted(null_diffs, key=lambda i: null_diffs[i]):
      if qid not in scores:
        continue
      score += scores[qid] if has_answer[qid] else (-1.0 if answers.get(qid) else 0.0)
      if score > best:
        best, threshold = score, null_diffs[qid]
    out[f"best_{name}"] = 100.0 * best / max(len(scores), 1)
    out[f"best_{name}_thresh"] = float(threshold)
  return out
