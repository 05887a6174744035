"""Where metrics go: the console (progress lines, and a progress bar in a terminal),
TensorBoard event files, metrics.jsonl, the optional external trackers (plm_jax/run/trackers.py),
and at the end the curves as a PNG (plm_jax/run/plots.py).

Only process 0 writes; other processes get a writer that does nothing.
"""

import contextlib
import datetime
import json
import os
import sys
import time

import jax
from tensorboardX import SummaryWriter
from tqdm import tqdm

from plm_jax.run import plots
from plm_jax.run import trackers


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
    self._hparams: dict = flat_config(config) if config is not None else {}
    self._last_eval: dict = {}
    self._jsonl = None
    self._tb = None
    self._trackers: list = []
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
        table = "\n".join(f"| {k} | {v} |" for k, v in self._hparams.items())
        self._tb.add_text("config", "| field | value |\n| --- | --- |\n" + table,
                          resume_step or 0)
    if config is not None:
      self._trackers = trackers.open_trackers(config, workdir, self._hparams,
                                              resume=bool(resume_step), warn=console)

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
    for tracker in self._trackers:
      tracker.log(step, split, clean)
    if split in ("eval", "validation"):
      self._last_eval = clean

  def close(self) -> None:
    for tracker in self._trackers:
      tracker.close()
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


_bar: tqdm | None = None       # the live progress bar, while a training loop shows one


def console(message: str) -> None:
  """A line on stdout from process 0, flushed at once (progress must be visible live); above
  the progress bar when one is shown, so the bar stays the last line."""
  if jax.process_index() != 0:
    return
  if _bar is not None:
    tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()
  else:
    print(message, file=sys.stdout, flush=True)


@contextlib.contextmanager
def timed(done: str):
  """A start-up phase: `with timed("built the model"):` prints "built the model in 1.2s" when
  it ends, so a slow start says where its time goes."""
  t0 = time.time()
  yield
  console(f"{done} in {time.time() - t0:.1f}s")


def wants_bar(mode: str, stream=None) -> bool:
  """train.progress_bar: "on", "off", or "auto" (a bar when the stream is a terminal: logs,
  pipes and batch jobs get plain lines only)."""
  if mode != "auto":
    return mode == "on"
  stream = stream or sys.stderr
  return bool(getattr(stream, "isatty", lambda: False)())


class ProgressBar:
  """The training loop's bar: a tqdm bar over the steps (on stderr by default) when `enabled`
  on process 0, else nothing. The periodic step lines still print (above the bar): they are
  the record of the run."""

  def __init__(self, enabled: bool, total: int, initial: int, stream=None):
    global _bar
    self.bar = None
    if enabled and jax.process_index() == 0:
      self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                      file=stream or sys.stderr, smoothing=0.1)
      _bar = self.bar

  def advance(self, steps: int = 1, postfix: str | None = None) -> None:
    if self.bar is not None:
      self.bar.update(steps)
      if postfix is not None:
        self.bar.set_postfix_str(postfix, refresh=False)

  def close(self) -> None:
    global _bar
    if self.bar is not None:
      self.bar.close()
      self.bar = _bar = None


def format_metrics(metrics: dict, keys: tuple[str, ...]) -> str:
  parts = []
  for k in keys:
    if k in metrics:
      v = float(metrics[k])
      # small values (a learning rate of 1e-5) in scientific notation, never as 0.0000
      plain = v == 0 or 1e-3 <= abs(v) < 1e4
      parts.append(f"{k} {v:.4f}" if plain else f"{k} {v:.3e}")
  return " | ".join(parts)


def recorded(workdir: str, step: int, split: str) -> dict | None:
  """The metrics of the last `split` record at `step` in the run's metrics.jsonl (None if
  there is none)."""
  found = None
  try:
    with open(os.path.join(workdir, METRICS_FILE), encoding="utf-8") as f:
      for line in f:
        try:
          record = json.loads(line)
        except ValueError:
          continue
        if record.get("step") == step and record.get("split") == split:
          found = record
  except OSError:
    return None
  if found is None:
    return None
  return {k: v for k, v in found.items() if k not in ("step", "split", "time")}


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
