"""One process of a multi-process run under a parent that outlives it, so that a lost peer ends
in one line and EXIT_PREEMPTED rather than a C++ abort.

When a process of a run dies (killed, preempted, its host lost), JAX's distributed runtime ends
the others from C++: the coordination service misses the dead one's heartbeats and every other
process aborts (SIGABRT, "Terminating process because the JAX distributed service detected
fatal errors") with a C++ stack. Python cannot catch an abort, and jaxlib 0.10 takes no Python
function for it (its `missed_heartbeat_callback` hands the callback an absl::Status that has no
Python type: std::bad_cast, abort again). So the CLI of a multi-process run runs itself as a
child under this parent:

  child    its native output (XLA's, Gloo's and the coordination service's logs, an abort's C++
           stack) goes to a log file, the native log; Python's own lines (progress, the one-line
           errors) stay on the terminal. A collective that fails because a peer went away (a
           Gloo "Connection reset by peer") is not reported as a traceback: the child waits for
           the runtime's verdict on the peer (the abort that follows).
  parent   forwards SIGTERM, waits, and reads how the child ended: an abort whose native log
           says a peer stopped sending heartbeats becomes one line naming the lost process and
           the last checkpoint, and EXIT_PREEMPTED (run again); a SIGTERM that ended the child
           before any handler was installed (start-up) likewise; any status the child chose
           itself passes through.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Callable

from plm_jax.run.stopping import EXIT_PREEMPTED

ENV_NATIVE_LOG = "PLM_JAX_NATIVE_LOG"     # set by the parent: the child's native log
ENV_LOG_DIR = "PLM_JAX_LOG_DIR"           # where native logs go (default: the temp directory)
ENV_PROCESS_ID = "PLM_JAX_PROCESS_ID"
# What the runtime logs when it gives up on a peer (coordination_service.cc, client.h).
LOST = re.compile(r"stopped sending heartbeats|heartbeat timeout|detected fatal errors")
# A collective that failed because the process at its other end went away.
CUT_OFF = re.compile(r"Connection reset|Connection closed|Connection refused|Broken pipe|"
                     r"Socket closed|heartbeat|UNAVAILABLE", re.I)
# Seconds past the heartbeat timeout that a child waits for the runtime's verdict on a peer.
VERDICT_MARGIN_S = 30
PLACE = "plm-jax: process {index} of {count}"   # written to the native log after start-up
TAIL_LINES = 20


def supervised() -> bool:
  """True in the child: its parent reads how it ends."""
  return bool(os.environ.get(ENV_NATIVE_LOG))


def native_log_path(environ=None) -> str:
  env = os.environ if environ is None else environ
  directory = env.get(ENV_LOG_DIR) or tempfile.gettempdir()
  index = env.get(ENV_PROCESS_ID)
  name = (f"process_{index}.native.log" if index is not None and env.get(ENV_LOG_DIR) else
          f"plm-jax-{socket.gethostname()}-{os.getpid()}.native.log")
  return os.path.join(directory, name)


def supervise(argv: list[str], name: str, kept: Callable[[], str],
              num_processes: int | None = None) -> int:
  """Runs `plm-jax argv[1:]` as a child and returns the status to exit with (its own, or
  EXIT_PREEMPTED with one line when it was cut off from its peers or stopped while starting)."""
  path = native_log_path()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  open(path, "w").close()              # this run's log only: the verdict is read from it
  received, children = [], []

  def forward(signum, _frame):
    received.append(signum)
    if signum == signal.SIGTERM and children and children[0].poll() is None:
      # A preemption notice may reach this process alone (PID 1 of a container); a second
      # SIGTERM where it reached both is harmless (JAX's notifier only sets a flag).
      children[0].send_signal(signum)
  # Installed before the child starts: a SIGTERM must not end this process and orphan it.
  # SIGINT is not forwarded: a Ctrl-C reaches the child too (one process group), and a second
  # one would tell it to stop without a checkpoint.
  old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    child = subprocess.Popen([sys.executable, "-m", "plm_jax.cli", *argv[1:]],
                             env=dict(os.environ, **{ENV_NATIVE_LOG: path}))
    children.append(child)
    if signal.SIGTERM in received:
      child.send_signal(signal.SIGTERM)   # came while it was being started
    code = child.wait()
  finally:
    for s, handler in old.items():
      signal.signal(s, handler)
  line, status = verdict(code, _read(path), path, kept, num_processes, received)
  if line:
    print(f"plm-jax {name}: {line}", file=sys.stderr, flush=True)
  if status == 0 and not os.environ.get(ENV_LOG_DIR):
    _remove(path)                      # a temporary log of a run that went well
  return status


def verdict(code: int, log: str, path: str, kept: Callable[[], str],
            num_processes: int | None = None, received=()) -> tuple[str | None, int]:
  """(the line to print or None, the exit status) for a child that ended with `code`."""
  if code >= 0:
    return None, code                  # the child's own verdict, already said
  sig = signal.Signals(-code)
  place = re.search(PLACE.format(index=r"(\d+)", count=r"(\d+)"), log)
  me = int(place.group(1)) if place else None
  count = int(place.group(2)) if place else num_processes
  of = f" of {count}" if count else ""
  if LOST.search(log):
    lost = sorted(set(lost_processes(log)) - {me})
    who = (f"process{'es' if len(lost) > 1 else ''} {', '.join(map(str, lost))}{of}"
           if lost else f"the coordinator (process 0{of}) or the connection to it")
    return (f"{who} {'were' if len(lost) > 1 else 'was'} lost (the distributed runtime "
            f"stopped hearing from it: killed, preempted or its host failed); {kept()}; run "
            f"the same command again (this process's native log: {path})"), EXIT_PREEMPTED
  if sig in (signal.SIGTERM, signal.SIGINT) or sig.value in received:
    return (f"stopped by {sig.name} while starting up (before its training steps): "
            f"{kept()}; run the same command to resume"), EXIT_PREEMPTED
  this = f"process {me}{of}" if me is not None else "this process"
  if sig == signal.SIGKILL:
    return (f"{this} was killed (SIGKILL: the out-of-memory killer, an operator or the "
            f"scheduler); {kept()}"), 128 + sig.value
  tail = "".join(log.splitlines(keepends=True)[-TAIL_LINES:])
  sys.stderr.write(tail)
  return (f"{this} died by {sig.name} (the last lines of its native log {path} are above)",
          128 + sig.value)


def lost_processes(log: str) -> list[int]:
  """The processes the coordination service gave up on, as its log names them."""
  ids = [int(i) for i in re.findall(r"Task (\d+) heartbeat timeout", log)]
  for block in re.findall(r"stopped sending heartbeats\):\s*\n([\d,\s]+)", log):
    ids += [int(i) for i in re.findall(r"\d+", block)]
  return ids


# --- the child ------------------------------------------------------------------------------

def redirect_native_output() -> None:
  """File descriptors 1 and 2 (what C++ writes to) go to the native log; Python's sys.stdout
  and sys.stderr keep where they went (the terminal, the launcher's pipe)."""
  log = os.open(os.environ[ENV_NATIVE_LOG], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
  for fd, name in ((1, "stdout"), (2, "stderr")):
    stream = getattr(sys, name)
    stream.flush()
    kept = os.fdopen(os.dup(fd), "w", buffering=1, encoding=stream.encoding,
                     errors=stream.errors)
    setattr(sys, name, kept)
    os.dup2(log, fd)
  os.close(log)


def note_place(index: int, count: int) -> None:
  """Tells the parent (through the native log) which process this is."""
  _native(PLACE.format(index=index, count=count) + "\n")


def await_verdict(error: BaseException, heartbeat_timeout_s: float) -> None:
  """A collective failed: if it looks like a peer went away, waits (up to the heartbeat timeout
  and a margin) for the runtime to end this process, which the parent then reports in one
  line. Returns when the error is of another kind or no verdict came: the caller raises it."""
  if not supervised() or not CUT_OFF.search(str(error)):
    return
  _native("".join(traceback.format_exception(error)))
  deadline = time.monotonic() + heartbeat_timeout_s + VERDICT_MARGIN_S
  while time.monotonic() < deadline:
    time.sleep(0.5)


def _native(text: str) -> None:
  os.write(2, text.encode(errors="replace"))


def _read(path: str, head: int = 4096, tail: int = 1 << 20) -> str:
  """The log's start (where the child says which process it is) and its last megabyte (how it
  ended): a long run's native log may be large."""
  try:
    with open(path, "rb") as f:
      size = os.fstat(f.fileno()).st_size
      if size <= head + tail:
        data = f.read()
      else:
        data = f.read(head) + b"\n...\n"
        f.seek(size - tail)
        data += f.read()
  except OSError:
    return ""
  return data.decode("utf-8", errors="replace")


def _remove(path: str) -> None:
  try:
    os.remove(path)
  except OSError:
    pass
