"""Stopping a run cleanly: preemption notices and interrupts become a checkpoint and an exit.

Cloud TPUs and GPU clusters announce a preemption with SIGTERM; a person stops a run with
Ctrl-C (SIGINT). Either way the run finishes the step in flight, saves a checkpoint at that step
with the loader's position, waits until it is committed and exits with EXIT_PREEMPTED, saying
so in one line; running the same command resumes from there.

One process: Python handlers set a flag that the loop reads after every step. Several
processes: every process must save the same step, so the decision is JAX's preemption service
(`multihost_utils.reached_preemption_sync_point`): a SIGTERM on any process reaches all of them
and they agree on the next step to stop at. JAX's runtime owns SIGTERM there; SIGINT is turned
into the same notice. A second SIGINT stops at once, without a checkpoint. A SIGINT that the
process was started with ignored (a job started with `&` from a script, nohup, some CI runners)
stays ignored, as Python and the usual convention leave it.

Each way a run can stop short is an exception with its own exit status (README, "Exit
statuses"), so a launcher can tell "resume me" from "fix me".
"""

import os
import signal
import threading
from typing import Callable

import jax
from jax.experimental import multihost_utils

from plm_jax.errors import PlmJaxError

EXIT_DIVERGED = 3        # non-finite loss or gradients (train.nonfinite)
EXIT_SAVE_FAILED = 5     # a checkpoint could not be written (full disk, lost filesystem)
EXIT_PREEMPTED = 75      # EX_TEMPFAIL: stopped by a signal, checkpoint saved; run it again


class RunStopped(PlmJaxError):
  """The run stopped before train.steps; `exit_code` says why."""
  exit_code = 1


class Preempted(RunStopped):
  exit_code = EXIT_PREEMPTED


class Diverged(RunStopped):
  exit_code = EXIT_DIVERGED


class SaveFailed(RunStopped):
  exit_code = EXIT_SAVE_FAILED


class StopRequests:
  """Installed for the life of a run; `reached(step)` after every step says whether to stop."""

  def __init__(self):
    self.multiprocess = jax.process_count() > 1
    self.received: int | None = None        # the signal (single process)
    self._old: dict = {}

  def install(self) -> "StopRequests":
    if threading.current_thread() is not threading.main_thread():
      return self                             # signal handlers live in the main thread only
    signals = (signal.SIGINT,) if self.multiprocess else (signal.SIGINT, signal.SIGTERM)
    for s in signals:
      if s == signal.SIGINT and signal.getsignal(s) == signal.SIG_IGN:
        continue                              # inherited ignored: not ours to take over
      self._old[s] = signal.signal(s, self._handle)
    return self

  def _handle(self, signum, _frame) -> None:
    if self.received == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt                 # a second Ctrl-C: stop now, no checkpoint
    if self.received is None:
      self.received = signum
    if self.multiprocess:
      # JAX's preemption notifier listens to SIGTERM and tells every process.
      os.kill(os.getpid(), signal.SIGTERM)

  def reached(self, step: int) -> bool:
    """Called with every step number, in order, by every process."""
    if self.multiprocess:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.received is not None

  def name(self) -> str:
    if self.received is None:
      return "a preemption notice" if self.multiprocess else "a stop request"
    return signal.Signals(self.received).name

  def uninstall(self) -> None:
    for s, handler in self._old.items():
      signal.signal(s, handler)
    self._old.clear()


class OutsideTheLoop:
  """For the life of a command that trains, in one process: a SIGTERM while no step loop
  listens (start-up before step 1, the final evaluation) ends the command with one line and
  EXIT_PREEMPTED, as one during the steps does, so a launcher runs it again. The loop's
  StopRequests takes SIGTERM over while it runs and gives it back after. `where()` says what
  is kept (the last checkpoint)."""

  def __init__(self, where: Callable[[], str]):
    self.where = where
    self._old = None
    self._raised = False

  def __enter__(self) -> "OutsideTheLoop":
    if threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, _frame) -> None:
    if self._raised:
      return                                  # the first one is already ending the command
    self._raised = True
    raise Preempted(f"stopped by {signal.Signals(signum).name} outside the training steps "
                    f"(starting up, or in the final evaluation): {self.where()}; run the same "
                    "command to resume")

  def __exit__(self, *_) -> None:
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)
