"""Multi-host runs: `jax.distributed` start-up, agreement between processes, failure detection.

One process per host (TPU VMs, GPU nodes) or per GPU. `initialize` is called by the CLI before
jax does anything else; it starts the distributed runtime when the run spans processes:

  explicit   --coordinator HOST:PORT --num-processes N --process-id I (flags), or the
             environment variables PLM_JAX_COORDINATOR, PLM_JAX_NUM_PROCESSES,
             PLM_JAX_PROCESS_ID (what launch/local.py and the recipes in launch/ set)
  slurm      under `srun` with more than one task: jax reads SLURM's variables
  tpu        on a Cloud TPU VM of a multi-host slice (TPU_WORKER_HOSTNAMES lists more than one
             worker, or MEGASCALE_NUM_SLICES > 1): jax reads the TPU metadata
  single     anything else: one process, nothing to start

Failure detection is JAX's: every process heartbeats to the coordination service; when one
dies (or stops answering for `heartbeat_timeout` seconds) the service tells the others, which
abort (in C++) instead of hanging in a collective or at a barrier; plm_jax/run/supervisor.py
turns that abort into one line and a status a launcher runs again.
"""

import dataclasses
import os
import socket
import sys

import jax
import numpy as np
from jax.experimental import multihost_utils

from plm_jax.errors import ConfigError

ENV_COORDINATOR = "PLM_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "PLM_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "PLM_JAX_PROCESS_ID"
ENV_HEARTBEAT = "PLM_JAX_HEARTBEAT_TIMEOUT"
DEFAULT_HEARTBEAT_S = 60          # jax's default is 100 s


@dataclasses.dataclass(frozen=True)
class Launch:
  mode: str                       # "explicit", "slurm", "tpu" or "single"
  coordinator: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  heartbeat_timeout_s: int = DEFAULT_HEARTBEAT_S
  local_device_ids: tuple[int, ...] | None = None   # None: jax decides


def _int(value, what: str) -> int | None:
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise ConfigError(f"{what}={value!r} is not an integer") from None


def detect(coordinator: str | None = None, num_processes: int | str | None = None,
           process_id: int | str | None = None, heartbeat_timeout_s: int | str | None = None,
           environ=None) -> Launch:
  """How this process was launched: flags first, then PLM_JAX_* variables, then SLURM / TPU."""
  env = os.environ if environ is None else environ
  coordinator = coordinator or env.get(ENV_COORDINATOR) or None
  # Flags (ints, or the strings of the command line) first, then the environment.
  num_processes = _int(num_processes, "--num-processes") if num_processes is not None else \
      _int(env.get(ENV_NUM_PROCESSES), ENV_NUM_PROCESSES)
  process_id = _int(process_id, "--process-id") if process_id is not None else \
      _int(env.get(ENV_PROCESS_ID), ENV_PROCESS_ID)
  heartbeat = _int(heartbeat_timeout_s, "--heartbeat-timeout") or \
      _int(env.get(ENV_HEARTBEAT), ENV_HEARTBEAT) or DEFAULT_HEARTBEAT_S
  given = [v is not None for v in (coordinator, num_processes, process_id)]
  if any(given):
    if not all(given):
      missing = [n for n, g in zip(("--coordinator", "--num-processes", "--process-id"), given)
                 if not g]
      raise ConfigError(f"a multi-process run needs --coordinator, --num-processes and "
                       f"--process-id together (or {ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, "
                       f"{ENV_PROCESS_ID}); missing {', '.join(missing)}")
    if not 0 <= process_id < num_processes:
      raise ConfigError(f"--process-id {process_id} is not in [0, --num-processes "
                       f"{num_processes})")
    if num_processes == 1:
      return Launch("single", heartbeat_timeout_s=heartbeat)
    return Launch("explicit", coordinator, num_processes, process_id, heartbeat)
  # srun sets SLURM_STEP_NUM_TASKS for its job step; the batch script itself is one task.
  slurm_tasks = _int(env.get("SLURM_STEP_NUM_TASKS"), "SLURM_STEP_NUM_TASKS")
  if env.get("SLURM_JOB_ID") and (slurm_tasks or 1) > 1:
    # jax gives each SLURM task the one GPU of its local rank; a task per node drives them all.
    per_node = env.get("SLURM_STEP_TASKS_PER_NODE", "").split("(")[0].split(",")[0]
    gpus = _int(env.get("SLURM_GPUS_ON_NODE"), "SLURM_GPUS_ON_NODE")
    local = tuple(range(gpus)) if per_node == "1" and gpus else None
    return Launch("slurm", heartbeat_timeout_s=heartbeat, local_device_ids=local)
  workers = [w for w in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if w.strip()]
  slices = _int(env.get("MEGASCALE_NUM_SLICES"), "MEGASCALE_NUM_SLICES") or 1
  if len(workers) > 1 or slices > 1:
    return Launch("tpu", heartbeat_timeout_s=heartbeat)
  return Launch("single", heartbeat_timeout_s=heartbeat)


def initialize(launch: Launch) -> None:
  """Starts jax.distributed for a multi-process launch and prints who is who; a no-op for one."""
  if launch.mode == "single":
    return
  kwargs = dict(heartbeat_timeout_seconds=launch.heartbeat_timeout_s,
                initialization_timeout=int(os.environ.get("PLM_JAX_INIT_TIMEOUT", "300")))
  if launch.mode == "explicit":
    kwargs.update(coordinator_address=launch.coordinator, num_processes=launch.num_processes,
                  process_id=launch.process_id)
  if launch.local_device_ids is not None:
    kwargs.update(local_device_ids=list(launch.local_device_ids))
  jax.distributed.initialize(**kwargs)
  local = jax.local_devices()
  print(f"[process {jax.process_index()}/{jax.process_count()}] host {socket.gethostname()} "
        f"pid {os.getpid()} ({launch.mode}): {len(local)} local {local[0].platform} device(s) "
        f"{[d.id for d in local]} of {jax.device_count()}", file=sys.stderr, flush=True)


def broadcast_bytes(data: bytes | None) -> bytes:
  """Process 0's bytes on every process (e.g. a tokenizer trained once)."""
  if jax.process_count() == 1:
    return data or b""
  raw = np.frombuffer(data or b"", np.uint8)
  size = int(multihost_utils.broadcast_one_to_all(np.int64(raw.size)))
  padded = np.zeros(size, np.uint8)
  padded[:min(size, raw.size)] = raw[:size]
  return bytes(np.asarray(multihost_utils.broadcast_one_to_all(padded)))


def agree(value: int | None) -> int | None:
  """Process 0's integer (or None) on every process: e.g. the step all of them resume from."""
  if jax.process_count() == 1:
    return value
  out = int(multihost_utils.broadcast_one_to_all(np.int64(-1 if value is None else value)))
  return None if out < 0 else out
