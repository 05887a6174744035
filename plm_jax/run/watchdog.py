"""A watchdog for hangs: a stuck collective or a dead filesystem leaves a run silent forever;
this turns that into a stack dump and an exit a launcher can act on.

The training loop calls `beat()` whenever it makes progress (a step dispatched, metrics fetched,
a checkpoint started, an evaluation done). A background thread checks that the last beat is
younger than the timeout; when it is not, it writes every thread's stack to stderr (and the
log) and ends the process with EXIT_HANG at once: the host is stuck inside a call that will not
return, so no cleanup can run.

The timeout is `train.step_timeout_s` when set; else it is derived from the run itself: until
the first measured interval, WARMUP_S (compilation, autotuning and the first steps may take a
while); then max(FLOOR_S, FACTOR x the longest gap between beats seen so far).
"""

import contextlib
import faulthandler
import os
import sys
import threading
import time

EXIT_HANG = 4            # documented in README: the run hung; restart it
WARMUP_S = 1800.0
FLOOR_S = 300.0
FACTOR = 20.0


class Watchdog:
  def __init__(self, timeout_s: float = 0.0, *, poll_s: float | None = None,
               describe=lambda: ""):
    self.fixed = float(timeout_s)
    self.describe = describe
    self._last = time.monotonic()
    self._longest_gap = 0.0
    self._measured = False
    self._paused = 0
    self._stop = threading.Event()
    self._poll = poll_s if poll_s is not None else (min(5.0, self.fixed / 4) if self.fixed
                                                     else 5.0)
    self._thread = threading.Thread(target=self._run, name="plm-jax-watchdog", daemon=True)

  def start(self) -> "Watchdog":
    self._last = time.monotonic()
    self._thread.start()
    return self

  def beat(self, measured: bool = False) -> None:
    """Progress. `measured`: the gap since the last beat is a representative interval (one log
    interval of steady-state training), used to size the automatic timeout."""
    now = time.monotonic()
    if measured:
      self._longest_gap = max(self._longest_gap, now - self._last)
      self._measured = True
    self._last = now

  def timeout(self) -> float:
    if self.fixed > 0:
      return self.fixed
    if not self._measured:
      return WARMUP_S
    return max(FLOOR_S, FACTOR * self._longest_gap)

  @contextlib.contextmanager
  def paused(self):
    """No verdict while inside (e.g. an evaluation, which is not a train step)."""
    self._paused += 1
    try:
      yield
    finally:
      self._paused -= 1
      self._last = time.monotonic()

  def stop(self) -> None:
    self._stop.set()

  def _run(self) -> None:
    while not self._stop.wait(self._poll):
      if self._paused:
        continue
      silent = time.monotonic() - self._last
      limit = self.timeout()
      if silent > limit:
        self._fire(silent, limit)

  def _fire(self, silent: float, limit: float) -> None:
    where = self.describe()
    sys.stderr.write(f"\nwatchdog: no progress for {silent:.0f}s (limit {limit:.0f}s, "
                     f"train.step_timeout_s){'; ' + where if where else ''}; the stacks of every "
                     "thread follow\n")
    sys.stderr.flush()
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.write(f"watchdog: the run hung{' ' + where if where else ''}: exiting with status "
                     f"{EXIT_HANG}; run the same command to resume from the last checkpoint\n")
    sys.stderr.flush()
    os._exit(EXIT_HANG)
