"""Training curves as PNG files, drawn with matplotlib from a run's metrics.jsonl.

Every run draws its own at its end (`WORKDIR/plots/curves.png`: the loss of the train and eval
splits, each accuracy the objective reports, the learning rate and the gradient norm), so a
curve needs no TensorBoard; `plm-jax plot W1 W2 ...` overlays one metric of several runs.
"""

import json
import math
import os

import matplotlib

matplotlib.use("Agg")            # files only: no display, no GUI toolkit
import matplotlib.pyplot as plt  # noqa: E402

from plm_jax.errors import DataError  # noqa: E402

PLOTS_DIR = "plots"
CURVES_FILE = "curves.png"
# Panels of a run's figure, in order; accuracies and other metrics follow when present.
FIRST = ("loss",)
LAST = ("learning_rate", "grad_norm")
SKIPPED = {"time", "step", "split", "tokens", "tokens_seen", "tokens_per_s", "data_wait_s",
           "nonfinite", "halted", "skipped_steps", "dropped_records", "perplexity"}


def read_curves(workdir: str, skipped=SKIPPED) -> dict[str, dict[str, list[tuple[int, float]]]]:
  """{split: {metric: [(step, value), ...]}} of a run's metrics.jsonl (the records a resumed
  run redid are already dropped from it; lines that do not parse are skipped), without the
  `skipped` keys (by default those no panel draws)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise DataError(f"{workdir} holds no metrics.jsonl: is it a plm-jax run's --workdir?")
  curves: dict = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        continue
      split, step = record.get("split"), record.get("step")
      if split not in ("train", "eval", "validation") or step is None:
        continue
      for key, value in record.items():
        if key in skipped or not isinstance(value, (int, float)) or not math.isfinite(value):
          continue
        curves.setdefault(split, {}).setdefault(key, []).append((int(step), float(value)))
  return curves


def _panels(curves: dict) -> list[str]:
  present = {m for series in curves.values() for m in series}
  middle = sorted(present - set(FIRST) - set(LAST))
  return [m for m in (*FIRST, *middle, *LAST) if m in present]


def plot_run(workdir: str) -> str | None:
  """Draws WORKDIR/plots/curves.png; returns its path (None when there is nothing to draw)."""
  curves = read_curves(workdir)
  panels = _panels(curves)
  if not panels:
    return None
  cols = min(3, len(panels))
  rows = -(-len(panels) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
  for ax, metric in zip(axes.flat, panels):
    for split, series in sorted(curves.items(), key=lambda kv: kv[0] != "train"):
      if metric in series:
        steps, values = zip(*series[metric])
        ax.plot(steps, values, marker="" if split == "train" else "o", label=split)
    ax.set_title(metric)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
  for ax in list(axes.flat)[len(panels):]:
    ax.axis("off")
  fig.suptitle(os.path.basename(os.path.abspath(workdir)))
  fig.tight_layout()
  out = os.path.join(workdir, PLOTS_DIR, CURVES_FILE)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out


def plot_runs(workdirs: list[str], out: str, metric: str = "loss") -> str:
  """One metric of several runs, train (lines) and eval (points), on one figure at `out`."""
  if not workdirs:
    raise DataError("give one or more run directories: plm-jax plot W1 [W2 ...]")
  fig, ax = plt.subplots(figsize=(8, 5))
  drawn = 0
  for workdir in workdirs:
    name = os.path.basename(os.path.abspath(workdir))
    for split, series in read_curves(workdir).items():
      if metric in series:
        steps, values = zip(*series[metric])
        ax.plot(steps, values, marker="" if split == "train" else "o",
                linestyle="-" if split == "train" else "--", label=f"{name} {split}")
        drawn += 1
  if not drawn:
    plt.close(fig)
    raise DataError(f"no run among {', '.join(workdirs)} has the metric {metric!r}; e.g. "
                    "--metric loss")
  ax.set_xlabel("step")
  ax.set_ylabel(metric)
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out


# --- figures of several runs' summaries (plm-jax compare) ----------------------------------------

def _save(fig, ax, out: str, xlabel: str, ylabel: str, title: str) -> str:
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out


def line_figure(series: dict, out: str, xlabel: str, ylabel: str, title: str) -> str | None:
  """{label: (xs, ys)} as lines on one figure at `out`; None (no file) when empty."""
  if not series:
    return None
  fig, ax = plt.subplots(figsize=(8, 5))
  for label, (xs, ys) in series.items():
    ax.plot(xs, ys, label=label)
  ax.legend(fontsize="small")
  return _save(fig, ax, out, xlabel, ylabel, title)


def bar_figure(values: dict, out: str, ylabel: str, title: str) -> str | None:
  """{label: value} as bars."""
  if not values:
    return None
  fig, ax = plt.subplots(figsize=(max(4, 1.3 * len(values)), 4))
  ax.bar(list(values), list(values.values()))
  return _save(fig, ax, out, "", ylabel, title)


def scatter_figure(points: dict, out: str, xlabel: str, ylabel: str, title: str) -> str | None:
  """{label: (x, mean, spread)} as points with error bars (a spread of nan: none)."""
  points = {k: p for k, p in points.items() if math.isfinite(p[1])}
  if not points:
    return None
  fig, ax = plt.subplots(figsize=(7, 5))
  for label, (x, mean, spread) in points.items():
    ax.errorbar([x], [mean], yerr=[spread if math.isfinite(spread) else 0.0], fmt="o",
                capsize=4, label=label)
  ax.legend(fontsize="small")
  return _save(fig, ax, out, xlabel, ylabel, title)
