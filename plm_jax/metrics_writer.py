"""Where metrics go: the console (progress lines), TensorBoard event files, metrics.jsonl, and
at the end the curves as a PNG (plm_jax/plots.py).

Only process 0 writes; other processes get a writer that does nothing.
"""

import datetime
import json
import os
import sys
import time

import jax
from tensorboardX import SummaryWriter

from plm_jax import plots


def format_duration(seconds: float) -> str:
  return str(datetime.timedelta(seconds=int(max(seconds, 0))))


METRICS_FILE = "metrics.jsonl"


class MetricsWriter:
  """Appends to a run's metrics. `resume_step`: the step the run (re)starts from; records past
  it, written by an interrupted run whose later steps are now done again, are dropped from
  metrics.jsonl (a {"split": "resume"} record marks the restart) and purged from TensorBoard,
  so each step has one record."""

  def __init__(self, workdir: str | None, *, tensorboard: bool = True,
               resume_step: int | None = None):
    self.enabled = jax.process_index() == 0 and workdir is not None
    self.workdir = workdir
    self._jsonl = None
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, METRICS_FILE)
    dropped = drop_records_after(path, resume_step) if resume_step is not None else 0
    self._jsonl = open(path, "a", encoding="utf-8")
    if resume_step is not None and (resume_step > 0 or dropped):
      self._jsonl.write(json.dumps({"step": resume_step, "split": "resume", "time": time.time(),
                                    "dropped_records": dropped}) + "\n")
      self._jsonl.flush()
    if tensorboard:
      # purge_step: TensorBoard discards the events of steps >= it written before this restart.
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                               purge_step=None if resume_step is None else resume_step + 1)

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
    if self.enabled:
      try:                  # the curves of what the run logged, even if it stopped early
        plots.plot_run(self.workdir)
      except Exception as e:  # noqa: BLE001 - a picture must never fail the run
        console(f"warning: could not draw {self.workdir}/plots ({e})")


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


def drop_records_after(path: str, step: int) -> int:
  """Rewrites metrics.jsonl without the records of steps > `step` (atomically); returns how
  many were dropped. A torn last line (a crash mid-write) is dropped too."""
  if not os.path.exists(path):
    return 0
  kept, dropped = [], 0
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        dropped += 1
        continue
      if record.get("step", 0) > step:
        dropped += 1
      else:
        kept.append(line if line.endswith("\n") else line + "\n")
  if dropped:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(kept)
    os.replace(tmp, path)
  return dropped
