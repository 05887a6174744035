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
               resume_step: int | None = None, config=None):
    self.enabled = jax.process_index() == 0 and workdir is not None
    self.workdir = workdir
    self._hparams: dict = {}
    self._last_eval: dict = {}
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
      if config is not None:
        self._hparams = flat_config(config)
        table = "\n".join(f"| {k} | {v} |" for k, v in self._hparams.items())
        self._tb.add_text("config", "| field | value |\n| --- | --- |\n" + table,
                          resume_step or 0)

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
    if split in ("eval", "validation"):
      self._last_eval = clean

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      if self._hparams and self._last_eval:
        # TensorBoard's HParams tab: this run's settings beside its last evaluation
        self._tb.add_hparams(self._hparams,
                             {f"hparams/{k}": v for k, v in self._last_eval.items()
                              if v == v and abs(v) != float("inf")}, name="hparams")
      self._tb.close()
    if self.enabled:
      try:                  # the curves of what the run logged, even if it stopped early
        plots.plot_run(self.workdir)
      except Exception as e:  # noqa: BLE001 - a picture must never fail the run
        console(f"warning: could not draw {self.workdir}/plots ({e})")


def flat_config(config) -> dict:
  """{"model.hidden_size": 128, ...}: every scalar field of a config (lists as text)."""
  out = {}
  for group, fields in config.to_dict().items():
    if not isinstance(fields, dict):
      continue
    for key, value in fields.items():
      if isinstance(value, (bool, int, float, str)):
        out[f"{group}.{key}"] = value
      elif isinstance(value, (list, tuple)):
        out[f"{group}.{key}"] = str(value)
  return out


def console(message: str) -> None:
  """A line on stdout from process 0, flushed at once (progress must be visible live)."""
  if jax.process_index() == 0:
    print(message, file=sys.stdout, flush=True)


def format_metrics(metrics: dict, keys: tuple[str, ...]) -> str:
  parts = []
  for k in keys:
    if k in metrics:
      v = float(metrics[k])
      # small values (a learning rate of 1e-5) in scientific notation, never as 0.0000
      plain = v == 0 or 1e-3 <= abs(v) < 1e4
      parts.append(f"{k} {v:.4f}" if plain else f"{k} {v:.3e}")
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
