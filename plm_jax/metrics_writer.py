"""Where metrics go: the console (progress lines), TensorBoard event files, metrics.jsonl.

Only process 0 writes; other processes get a writer that does nothing.
"""

import datetime
import json
import os
import sys
import time

import jax
from tensorboardX import SummaryWriter


def format_duration(seconds: float) -> str:
  return str(datetime.timedelta(seconds=int(max(seconds, 0))))


class MetricsWriter:
  def __init__(self, workdir: str | None, *, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0 and workdir is not None
    self._jsonl = None
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
    if tensorboard:
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, split: str, metrics: dict) -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({"step": step, "split": split, "time": time.time(), **clean})
                      + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in clean.items():
        self._tb.add_scalar(f"{split}/{k}", v, step)
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def console(message: str) -> None:
  """A line on stdout from process 0, flushed at once (progress must be visible live)."""
  if jax.process_index() == 0:
    print(message, file=sys.stdout, flush=True)


def format_metrics(metrics: dict, keys: tuple[str, ...]) -> str:
  parts = []
  for k in keys:
    if k in metrics:
      v = float(metrics[k])
      parts.append(f"{k} {v:.4f}" if abs(v) < 1e4 else f"{k} {v:.3e}")
  return " | ".join(parts)
