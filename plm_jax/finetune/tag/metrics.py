"""Token-tagging metrics over whole splits, on the host: word accuracy and entity-level
precision / recall / F1.

Entities are read from the tags exactly as `seqeval` does in its default mode (the one Hugging
Face's run_ner.py reports): IOB1, IOB2 and IOBES tags alike, a chunk begins at B-/S- or at an
I-/E- whose type differs from the previous tag's, and ends at E-/S-, at O, at a B-/S-, or where
the type changes. An entity counts as found only when its type and both ends match. The rules
are re-implemented here (tests/test_tag.py checks them against seqeval on random sequences)
because importing seqeval pulls in scikit-learn: about a second at every CLI start.
"""

import numpy as np

CHUNK_PREFIXES = ("B-", "I-", "E-", "S-")


def _ends(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
  if prev_tag in ("E", "S"):
    return True
  if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
    return True
  return prev_tag not in ("O", ".") and prev_type != type_


def _starts(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
  if tag in ("B", "S"):
    return True
  if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
    return True
  return tag not in ("O", ".") and prev_type != type_


def entities(tags: list[str]) -> list[tuple[str, int, int]]:
  """(type, first word, last word) of every entity of one sentence's tags."""
  prev_tag, prev_type, begin, out = "O", "", 0, []
  for i, chunk in enumerate([*tags, "O"]):
    tag, type_ = chunk[0], chunk[1:].split("-", maxsplit=1)[-1] or "_"
    if _ends(prev_tag, tag, prev_type, type_):
      out.append((prev_type, begin, i - 1))
    if _starts(prev_tag, tag, prev_type, type_):
      begin = i
    prev_tag, prev_type = tag, type_
  return out


def is_entity_scheme(names) -> bool:
  """Do the tags name entities (O plus B-/I-/E-/S- prefixed types)? POS tags do not."""
  names = [n for n in names if n]
  return bool(names) and all(n == "O" or n.startswith(CHUNK_PREFIXES) for n in names) and \
      any(n != "O" for n in names)


def _ratio(a: float, b: float) -> float:
  return a / b if b > 0 else 0.0


def _f1(p: float, r: float) -> float:
  return 2 * p * r / (p + r) if p + r > 0 else 0.0


def tag_report(gold: list[list[str]], predicted: list[list[str]], entity_scheme: bool) -> dict:
  """accuracy (of words) and, for entity tags, micro precision / recall / f1 of entities and
  "per_type" rows {"type", "precision", "recall", "f1", "support" (gold entities)}."""
  words = sum(len(g) for g in gold)
  correct = sum(int(a == b) for g, p in zip(gold, predicted) for a, b in zip(g, p))
  out = {"words": words, "accuracy": _ratio(correct, words)}
  if not entity_scheme:
    return out
  true_set, pred_set = set(), set()
  for s, (g, p) in enumerate(zip(gold, predicted)):
    true_set.update((s, *e) for e in entities(g))
    pred_set.update((s, *e) for e in entities(p))
  hit = true_set & pred_set
  out["precision"], out["recall"] = _ratio(len(hit), len(pred_set)), _ratio(len(hit),
                                                                             len(true_set))
  out["f1"] = _f1(out["precision"], out["recall"])
  rows = []
  for type_ in sorted({e[1] for e in true_set | pred_set}):
    t = sum(1 for e in true_set if e[1] == type_)
    p = sum(1 for e in pred_set if e[1] == type_)
    h = sum(1 for e in hit if e[1] == type_)
    precision, recall = _ratio(h, p), _ratio(h, t)
    rows.append({"type": type_, "precision": precision, "recall": recall,
                 "f1": _f1(precision, recall), "support": t})
  out["per_type"] = rows
  return out


def format_per_type(report: dict) -> list[str]:
  """The per-entity-type table as console lines (empty for tags without entities)."""
  rows = report.get("per_type", [])
  if not rows:
    return []
  width = max(8, *(len(r["type"]) for r in rows))
  lines = [f"  {'entity':<{width}}  precision  recall     f1  support"]
  lines += [f"  {r['type']:<{width}}  {r['precision']:9.4f}  {r['recall']:6.4f}  {r['f1']:.4f}"
            f"  {r['support']:7d}" for r in rows]
  return lines


def token_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
  """Mean cross-entropy of the labelled positions (labels >= 0) of [N, T, C] logits."""
  keep = labels >= 0
  if not keep.any():
    return 0.0
  x = logits[keep].astype(np.float64)
  x = x - x.max(-1, keepdims=True)
  log_probs = x - np.log(np.exp(x).sum(-1, keepdims=True))
  return float(-np.mean(log_probs[np.arange(len(x)), labels[keep]]))
