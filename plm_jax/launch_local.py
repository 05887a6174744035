"""Starts N plm-jax processes on this machine, each with its own devices, as one run.

  python -m plm_jax.launch_local --num-processes 2 --devices-per-process 4 -- \\
      plm-jax train --config configs/bert.py:tiny --workdir runs/bert-2proc

Each process gets PLM_JAX_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID (so `plm-jax` starts
jax.distributed), JAX_PLATFORMS=cpu and its own simulated device count: the multi-host code
paths (per-process data, cross-process collectives, every process writing its checkpoint
shards) run on a laptop exactly as on a pod. With --platform gpu each process gets its own
GPUs of this host instead (one process per GPU, no torchrun). Output lines are prefixed with the process index
(and copied to --log-dir/process_<i>.log; each process's native log, XLA's and Gloo's own output,
goes to --log-dir/process_<i>.native.log). When a process fails, the others are given --grace
seconds to stop on their own (jax's heartbeat stops them: one line naming the lost process, exit
75) and are then killed. The exit status is the first a process chose itself (1-127, e.g. 75:
run again); only when every failure was a death by a signal, the first of those (128 + N).
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time

EXIT_PREEMPTED = 75      # plm_jax/run/stopping.py (not imported: the launcher stays light)

def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def child_env(base: dict, process_id: int, num_processes: int, devices: int, port: int,
              heartbeat: int, platform: str = "cpu", log_dir: str | None = None) -> dict:
  """The environment of process `process_id`: its place in the run and its devices (CPU:
  `devices` simulated ones; GPU: GPUs process_id * devices ... + devices - 1)."""
  env = dict(base)
  if log_dir:
    env["PLM_JAX_LOG_DIR"] = os.path.abspath(log_dir)   # native logs beside process_<i>.log
  env.update({
      "PLM_JAX_COORDINATOR": f"127.0.0.1:{port}",
      "PLM_JAX_NUM_PROCESSES": str(num_processes),
      "PLM_JAX_PROCESS_ID": str(process_id),
      "PLM_JAX_HEARTBEAT_TIMEOUT": str(heartbeat),
      "PYTHONUNBUFFERED": "1",
  })
  if platform == "gpu":
    first = process_id * devices
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(first + i) for i in range(devices))
    env.pop("JAX_PLATFORMS", None)
    return env
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["JAX_PLATFORMS"] = "cpu"
  env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
  return env


def _pump(stream, prefix: str, sink, log) -> None:
  for line in iter(stream.readline, ""):
    sink.write(prefix + line)
    sink.flush()
    if log is not None:
      log.write(line)
      log.flush()
  stream.close()


def launch(command: list[str], num_processes: int, devices_per_process: int, *,
           port: int | None = None, log_dir: str | None = None, grace: float = 90.0,
           heartbeat: int = 10, platform: str = "cpu") -> int:
  """Runs `command` as `num_processes` processes; returns the run's exit status (run_status)."""
  port = port or free_port()
  if log_dir:
    os.makedirs(log_dir, exist_ok=True)
  procs, pumps, logs, received = [], [], [], []

  def forward(signum, _frame):
    # To each process's group, as a scheduler's preemption would: a plm-jax process of a
    # multi-process run is a parent and the child it supervises.
    received.append(signum)
    for p in procs:
      if p.poll() is None:
        try:
          os.killpg(p.pid, signum)
        except ProcessLookupError:
          pass
  # Before the first process starts: a SIGTERM must never end the launcher and orphan them.
  old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
  for i in range(num_processes):
    log = open(os.path.join(log_dir, f"process_{i}.log"), "w", encoding="utf-8") \
        if log_dir else None
    logs.append(log)
    p = subprocess.Popen(command, env=child_env(os.environ, i, num_processes,
                                                devices_per_process, port, heartbeat, platform,
                                                log_dir),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    procs.append(p)
    t = threading.Thread(target=_pump, args=(p.stdout, f"[{i}] ", sys.stdout, log), daemon=True)
    t.start()
    pumps.append(t)

  try:
    failures = _watch(procs, grace)
    for p in procs:
      p.wait()
    for t in pumps:
      t.join(timeout=5)
  finally:
    for s, handler in old.items():
      signal.signal(s, handler)
    for log in logs:
      if log is not None:
        log.close()
  seen = [j for j, _ in failures]
  failures += [(i, p.returncode) for i, p in enumerate(procs) if p.returncode and i not in seen]
  codes = [code for _, code in failures]
  status = run_status(codes, received)
  if status == EXIT_PREEMPTED and not any(0 < c < 128 for c in codes):
    print(f"[launch_local] stopped by {signal.Signals(received[0]).name} while the processes "
          "were starting (before any could save): nothing of the run was lost; run the same "
          "command again", file=sys.stderr, flush=True)
  return status


def _watch(procs: list, grace: float) -> list[tuple[int, int]]:
  """Waits for the processes; after the first failure the others get `grace` seconds to stop
  by themselves, then are killed. Returns (process, status) of those that failed, in order."""
  failures, failed_at = [], None
  while any(p.poll() is None for p in procs):
    for i, p in enumerate(procs):
      code = p.poll()
      if code not in (None, 0) and i not in [j for j, _ in failures]:
        failures.append((i, code))
      if code not in (None, 0) and failed_at is None:
        failed_at = time.time()
        print(f"[launch_local] process {i} exited with status {code}; waiting up to "
              f"{grace:.0f}s for the others to stop", file=sys.stderr, flush=True)
    if failed_at is not None and time.time() - failed_at > grace:
      for i, p in enumerate(procs):
        if p.poll() is None:
          print(f"[launch_local] killing process {i}: still running {grace:.0f}s after a "
                "failure", file=sys.stderr, flush=True)
          os.killpg(p.pid, signal.SIGKILL)
      break
    time.sleep(0.2)
  return failures


def run_status(failures: list[int], forwarded=()) -> int:
  """The run's exit status from its processes' failing statuses, in the order they ended: the
  first a process chose itself (1-127: it said why, e.g. 75 when a peer was lost) over a death
  by a signal (negative, or 128 + N from a shell), which says nothing of what to do next. A
  process ended by a SIGTERM or SIGINT the launcher forwarded (one that came before the
  process could handle it: while its interpreter started) was stopped before it saved
  anything: EXIT_PREEMPTED, run again."""
  stopped = {-s for s in forwarded} | {128 + s for s in forwarded}
  failures = [EXIT_PREEMPTED if c in stopped else c for c in failures]
  chosen = [c for c in failures if 0 < c < 128]
  if chosen:
    return chosen[0]
  if failures:
    return failures[0] if failures[0] > 0 else 128 - failures[0]
  return 0


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--num-processes", type=int, default=2)
  parser.add_argument("--devices-per-process", type=int, default=4)
  parser.add_argument("--port", type=int, default=None, help="coordinator port (default: free)")
  parser.add_argument("--log-dir", default=None, help="also write process_<i>.log here")
  parser.add_argument("--grace", type=float, default=90.0,
                      help="seconds the others get to stop after one fails")
  parser.add_argument("--heartbeat-timeout", type=int, default=10,
                      help="seconds of silence after which jax stops the other processes")
  parser.add_argument("--platform", choices=("cpu", "gpu"), default="cpu",
                      help="cpu: simulated devices; gpu: each process gets "
                      "--devices-per-process GPUs of this host (CUDA_VISIBLE_DEVICES)")
  parser.add_argument("command", nargs=argparse.REMAINDER,
                      help="-- plm-jax COMMAND ... (run by every process)")
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    parser.error("give the command after --, e.g. -- plm-jax train --config ...")
  if args.num_processes < 1 or args.devices_per_process < 1:
    parser.error("--num-processes and --devices-per-process must be >= 1")
  return launch(command, args.num_processes, args.devices_per_process, port=args.port,
                log_dir=args.log_dir, grace=args.grace, heartbeat=args.heartbeat_timeout,
                platform=args.platform)


if __name__ == "__main__":
  sys.exit(main())
