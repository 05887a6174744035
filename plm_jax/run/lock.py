"""One trainer per workdir: an exclusive lock file naming its holder.

`WORKDIR/.lock` is created atomically (O_EXCL) and holds the host, the pid and the start time of
the trainer that owns the workdir; it is removed when the run closes. A second trainer on the
same workdir is refused with one line naming the holder. A lock left by a process that died
(kill -9, a crashed host) is taken over when that process was on this host and is gone, or by
an earlier attempt of the same SLURM job (a requeued job keeps its id), or when the launcher says
the holder is dead (PLM_JAX_BREAK_LOCK=1: launch/tpu_vm.sh sets it after recreating a preempted
VM). Any other lock of another host is never taken silently (its process cannot be checked from
here): the message says how to remove it. In a multi-process run, process 0 holds the lock.
"""

import json
import os
import socket
import time

from plm_jax.errors import PlmJaxError

LOCK_FILE = ".lock"


class WorkdirLocked(PlmJaxError):
  """Another trainer holds the workdir."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True                      # exists, owned by another user
  return True


def _read(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}                        # half-written by a holder that died while writing it


class WorkdirLock:
  """Held from `acquire()` to `release()`; a no-op for processes other than process 0."""

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.path = os.path.join(workdir, LOCK_FILE)
    self.workdir = workdir
    self.enabled = enabled
    self.held = False

  def acquire(self) -> str | None:
    """Takes the lock; returns a note when a dead holder's lock was taken over."""
    if not self.enabled:
      return None
    os.makedirs(self.workdir, exist_ok=True)
    note = None
    for _ in range(2):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = _read(self.path)
        if not self._stale(holder):
          raise WorkdirLocked(self._refusal(holder)) from None
        note = (f"took over the lock of a trainer that is gone (pid {holder.get('pid')} on "
                f"{holder.get('host')}, started {holder.get('started', '?')})")
        try:
          os.remove(self.path)
        except FileNotFoundError:
          pass
        continue
      with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"host": socket.gethostname(), "pid": os.getpid(),
                   "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                   "slurm_job": os.environ.get("SLURM_JOB_ID", "")}, f)
      self.held = True
      return note
    raise WorkdirLocked(f"--workdir {self.workdir!r}: could not take {self.path}; another "
                        "trainer is starting on it")

  def _stale(self, holder: dict) -> bool:
    if not holder:
      # Unreadable: a holder that died between creating and writing it (stale after a few
      # seconds), or one writing it now.
      try:
        return time.time() - os.path.getmtime(self.path) > 10
      except FileNotFoundError:
        return True                  # gone meanwhile: try again
    if os.environ.get("PLM_JAX_BREAK_LOCK") == "1":
      return True
    job = os.environ.get("SLURM_JOB_ID", "")
    if job and holder.get("slurm_job") == job:
      return True                    # this job's earlier attempt, before a requeue
    return holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", 0)))

  def _refusal(self, holder: dict) -> str:
    who = (f"pid {holder.get('pid')} on host {holder.get('host')}, started "
           f"{holder.get('started', '?')}") if holder else "a trainer that is starting"
    return (f"--workdir {self.workdir!r} is in use by another trainer ({who}); wait for it or "
            f"stop it, use another --workdir, or, if that trainer is dead, delete {self.path}")

  def release(self) -> None:
    if self.held:
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass
      self.held = False
