"""Classification and regression metrics over a whole split, on the host (numpy).

F1, Matthews correlation and Spearman's rank correlation do not decompose into per-batch sums,
so evaluation gathers every prediction and computes them here, as GLUE defines them.
"""

import numpy as np


def confusion(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """[true class, predicted class] counts."""
  m = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(m, (labels, predictions), 1)
  return m


def f1_scores(m: np.ndarray) -> np.ndarray:
  """Per-class F1 from a confusion matrix (0 for a class never predicted nor present)."""
  tp = np.diag(m).astype(np.float64)
  denominator = m.sum(0) + m.sum(1)
  return np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)


def matthews(m: np.ndarray) -> float:
  """Multi-class Matthews correlation coefficient (Gorodkin, 2004); 0 when undefined."""
  m = m.astype(np.float64)
  t, p, c, s = m.sum(1), m.sum(0), np.trace(m), m.sum()
  denominator = np.sqrt(s * s - p @ p) * np.sqrt(s * s - t @ t)
  return float((c * s - t @ p) / denominator) if denominator > 0 else 0.0


def pearson(x: np.ndarray, y: np.ndarray) -> float:
  x, y = x - x.mean(), y - y.mean()
  denominator = np.sqrt((x @ x) * (y @ y))
  return float(x @ y / denominator) if denominator > 0 else 0.0


def ranks(x: np.ndarray) -> np.ndarray:
  """Ranks from 1, ties sharing their mean rank (as Spearman's rho needs)."""
  order = np.argsort(x, kind="stable")
  sorted_x = x[order]
  starts = np.r_[0, np.flatnonzero(np.diff(sorted_x)) + 1]
  ends = np.r_[starts[1:], len(x)]
  mean_rank = (starts + ends + 1) / 2.0
  out = np.empty(len(x), np.float64)
  out[order] = np.repeat(mean_rank, ends - starts)
  return out


def classification_metrics(labels: np.ndarray, logits: np.ndarray) -> dict:
  """accuracy, f1 (of class 1 for two classes, as GLUE's MRPC/QQP; else macro), macro_f1 (the
  mean over the classes that occur in the labels or the predictions, as scikit-learn), mcc."""
  num_classes = logits.shape[-1]
  predictions = np.argmax(logits, axis=-1)
  m = confusion(labels, predictions, num_classes)
  f1 = f1_scores(m)
  present = (m.sum(0) + m.sum(1)) > 0
  macro = float(f1[present].mean()) if present.any() else 0.0
  return {"accuracy": float(np.mean(predictions == labels)) if len(labels) else 0.0,
          "f1": float(f1[1] if num_classes == 2 else macro),
          "macro_f1": macro, "mcc": matthews(m)}


def per_class_report(labels: np.ndarray, logits: np.ndarray, names: tuple[str, ...] = ()
                     ) -> dict:
  """{"per_class": [{"label", "precision", "recall", "f1", "support"}, ...],
  "confusion_matrix": [[count of true class i predicted as j]]}."""
  num_classes = logits.shape[-1]
  m = confusion(labels.astype(np.int64), np.argmax(logits, axis=-1), num_classes)
  tp = np.diag(m).astype(np.float64)
  predicted, support = m.sum(0), m.sum(1)
  precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
  recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
  rows = [{"label": names[c] if c < len(names) and names[c] else str(c),
           "precision": float(precision[c]), "recall": float(recall[c]),
           "f1": float(f1_scores(m)[c]), "support": int(support[c])}
          for c in range(num_classes)]
  return {"per_class": rows, "confusion_matrix": m.tolist()}


def format_per_class(report: dict) -> list[str]:
  """The per-class table and the confusion matrix as console lines."""
  rows = report["per_class"]
  width = max(8, *(len(r["label"]) for r in rows))
  lines = [f"  {'class':<{width}}  precision  recall     f1  support"]
  lines += [f"  {r['label']:<{width}}  {r['precision']:9.4f}  {r['recall']:6.4f}  {r['f1']:.4f}"
            f"  {r['support']:7d}" for r in rows]
  lines.append("  confusion (rows: true, columns: predicted, in the order above)")
  lines += ["    " + " ".join(f"{n:6d}" for n in row) for row in report["confusion_matrix"]]
  return lines


def regression_metrics(labels: np.ndarray, outputs: np.ndarray) -> dict:
  """pearson, spearman and mse of one output per example."""
  y, x = labels.astype(np.float64), outputs.reshape(-1).astype(np.float64)
  return {"pearson": pearson(x, y), "spearman": pearson(ranks(x), ranks(y)),
          "mse": float(np.mean((x - y) ** 2)) if len(y) else 0.0}


def split_metrics(labels: np.ndarray, logits: np.ndarray, regression: bool) -> dict:
  if regression:
    return regression_metrics(labels, logits)
  return classification_metrics(labels.astype(np.int64), logits)


def higher_is_better(metric: str) -> bool:
  return metric not in ("mse", "loss")
