"""Two processes x 4 CPU devices through the local launcher, against one process x 8 devices."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from helpers import ROOT
from plm_jax import cli, launch_local
from plm_jax.hardware import distributed
from plm_jax.errors import ConfigError
from plm_jax.run import checkpoint, supervisor
from plm_jax.run.stopping import EXIT_PREEMPTED

CONFIGS = {"bert": os.path.join(ROOT, "configs", "bert.py"),
           "gpt": os.path.join(ROOT, "configs", "gpt.py")}


def launcher(*command, log_dir, heartbeat=10):
  return [sys.executable, "-m", "plm_jax.launch_local", "--num-processes", "2",
          "--devices-per-process", "4", "--log-dir", str(log_dir), "--grace", "120",
          "--heartbeat-timeout", str(heartbeat), "--", sys.executable, "-m", "plm_jax.cli",
          *command]


def launch(*command, log_dir, timeout=300):
  r = subprocess.run(launcher(*command, log_dir=log_dir), capture_output=True, text=True,
                     timeout=timeout, cwd=ROOT)
  assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
  return r.stdout


def lines(workdir, split):
  return [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))
          if json.loads(l)["split"] == split]


def train_args(family, workdir, tokenizer, steps=4):
  return ["train", "--config", f"{CONFIGS[family]}:tiny", "--workdir", str(workdir),
          f"--config.train.steps={steps}", "--config.train.log_every=1",
          "--config.train.eval_steps=2", f"--config.data.tokenizer={tokenizer}",
          "--config.data.dupe_factor=1", "--config.checkpoint.every=2"]


@pytest.mark.e2e
# GPT's two-process run is a slow check: the process boundary is the same code for every
# family, and BERT's run (masks drawn per process) is the harder case
@pytest.mark.parametrize("family", ["bert", pytest.param("gpt", marks=pytest.mark.slow)])
def test_two_processes_train_like_one(family, tmp_path, tokenizers_dir):
  two, one = tmp_path / "two", tmp_path / "one"
  out = launch(*train_args(family, two, tokenizers_dir[family]), log_dir=tmp_path / "logs")
  # start-up names every process, its host and its devices; only process 0 logs the run
  assert "[process 0/2]" in out and "[process 1/2]" in out and "4 local cpu device(s)" in out
  assert not re.search(r"^\[1\] step ", out, re.M) and re.search(r"^\[0\] step 4/4", out, re.M)
  assert cli.main(["plm-jax", *train_args(family, one, tokenizers_dir[family])]) == 0
  two_train, one_train = lines(two, "train"), lines(one, "train")
  assert [l["step"] for l in two_train] == [1, 2, 3, 4]
  for a, b in zip(two_train, one_train):
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-5), (a, b)
    assert a["tokens_seen"] == b["tokens_seen"]
  (two_eval,), (one_eval,) = lines(two, "eval"), lines(one, "eval")
  assert two_eval["loss"] == pytest.approx(one_eval["loss"], rel=1e-5, abs=1e-5)
  # every process wrote its shards; one process restores the checkpoint of two
  assert sorted(os.listdir(two / "checkpoints")) == ["2", "4"]
  assert cli.main(["plm-jax", "evaluate", "--workdir", str(two), "--eval_steps", "2"]) == 0
  restored = json.load(open(two / "eval_step_4.json"))
  assert restored["loss"] == pytest.approx(two_eval["loss"], rel=1e-5, abs=1e-5)
  if family == "bert":
    # ... and two processes restore the checkpoint of one: resuming it with two processes
    # gives the losses resuming it with one does
    copy = tmp_path / "one-copy"
    shutil.copytree(one, copy)
    out = launch(*train_args(family, one, tokenizers_dir[family], steps=6),
                 log_dir=tmp_path / "logs2")
    assert "resumed from step 4" in out and sorted(os.listdir(one / "checkpoints"))[-1] == "6"
    assert cli.main(["plm-jax", *train_args(family, copy, tokenizers_dir[family], steps=6)]) == 0
    by_two, by_one = lines(one, "train")[4:], lines(copy, "train")[4:]
    assert [l["step"] for l in by_two] == [5, 6] == [l["step"] for l in by_one]
    for a, b in zip(by_two, by_one):
      assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-5), (a, b)


@pytest.mark.e2e
def test_a_lost_process_ends_the_other_in_one_line(tmp_path, tokenizers_dir):
  """Kill process 1 mid-run: process 0 must stop by itself within bounded time (jax's
  heartbeat), not hang in a collective nor abort with a C++ stack: one line naming process 1
  and the intact checkpoint, exit 75 (run again) from it and from the launcher; the checkpoint
  resumes."""
  logs, workdir = tmp_path / "logs", tmp_path / "run"
  args = train_args("gpt", workdir, tokenizers_dir["gpt"], steps=100000)
  out = open(tmp_path / "launcher.out", "w")
  proc = subprocess.Popen(launcher(*args, log_dir=logs, heartbeat=5), cwd=ROOT,
                          stdout=out, stderr=subprocess.STDOUT)
  try:
    deadline = time.time() + 240
    log0, log1 = logs / "process_0.log", logs / "process_1.log"
    while time.time() < deadline:
      if log0.exists() and "step 3/" in log0.read_text() and log1.exists():
        break
      assert proc.poll() is None, "the run ended before it was killed"
      time.sleep(0.5)
    else:
      pytest.fail("the run did not reach step 3")
    pid = int(re.search(r"\[process 1/2\] host \S+ pid (\d+)", log1.read_text()).group(1))
    saved_before = checkpoint.complete_steps(str(workdir))
    os.kill(pid, signal.SIGKILL)
    killed_at = time.time()
    code = proc.wait(timeout=100)
    elapsed = time.time() - killed_at
  finally:
    if proc.poll() is None:
      proc.kill()
    out.close()
  assert saved_before, "no checkpoint was complete before the kill"
  assert code == EXIT_PREEMPTED, (code, open(tmp_path / "launcher.out").read()[-3000:])
  # The launcher would kill process 0 only after its 120 s grace: it stopped on its own.
  assert elapsed < 60, elapsed
  # Process 0's output ends with its last step and one line: no traceback, no C++ stack.
  after = log0.read_text().split("\n")
  last_step = max(i for i, l in enumerate(after) if l.startswith("step "))
  tail = [l for l in after[last_step + 1:] if l.strip()]
  assert len(tail) == 1, tail
  steps = checkpoint.complete_steps(str(workdir))
  assert re.fullmatch(r"plm-jax train: process 1 of 2 was lost \(.*\); the last checkpoint, "
                      rf"step {steps[-1]} in \S+, is intact; run the same command again "
                      r"\(this process's native log: \S+process_0\.native\.log\)", tail[0]), tail
  # ... the C++ side of the story is in the native log
  assert "stopped sending heartbeats" in (logs / "process_0.native.log").read_text()
  # The last checkpoint complete before the kill (or a later one) is intact: a run resumes it.
  assert steps[-1] >= saved_before[-1], (steps, saved_before)
  resume = train_args("gpt", workdir, tokenizers_dir["gpt"], steps=steps[-1] + 1)
  assert cli.main(["plm-jax", *resume]) == 0
  assert lines(workdir, "train")[-1]["step"] == steps[-1] + 1


# --- launch detection (no processes started) -----------------------------------------------

def test_detect_explicit_slurm_tpu_and_single():
  d = distributed.detect
  assert d(environ={}).mode == "single"
  launch = d("10.0.0.1:1234", 4, 2, environ={})
  assert (launch.mode, launch.num_processes, launch.process_id) == ("explicit", 4, 2)
  env = {"PLM_JAX_COORDINATOR": "h:1", "PLM_JAX_NUM_PROCESSES": "2", "PLM_JAX_PROCESS_ID": "1",
         "PLM_JAX_HEARTBEAT_TIMEOUT": "7"}
  launch = d(environ=env)
  assert (launch.mode, launch.coordinator, launch.heartbeat_timeout_s) == ("explicit", "h:1", 7)
  assert d(environ={"SLURM_JOB_ID": "9", "SLURM_STEP_NUM_TASKS": "32"}).mode == "slurm"
  assert d(environ={"SLURM_JOB_ID": "9", "SLURM_STEP_NUM_TASKS": "1"}).mode == "single"
  assert d(environ={"TPU_WORKER_HOSTNAMES": "a,b,c,d"}).mode == "tpu"
  assert d(environ={"TPU_WORKER_HOSTNAMES": "localhost"}).mode == "single"
  assert d(environ={"MEGASCALE_NUM_SLICES": "2"}).mode == "tpu"
  assert d("h:1", 1, 0, environ={}).mode == "single"
  with pytest.raises(ConfigError, match="missing --num-processes, --process-id"):
    d("h:1", environ={})
  with pytest.raises(ConfigError, match="--process-id 3 is not in"):
    d("h:1", 2, 3, environ={})


def test_cli_rejects_half_a_launch(capsys):
  assert cli.main(["plm-jax", "train", "--coordinator", "h:1", "--workdir", "x"]) == 2
  assert "missing --num-processes, --process-id" in capsys.readouterr().err


# --- a lost peer, as the supervisor reads it (no processes started) ---------------------------

NATIVE_LOG = """plm-jax: process 0 of 2
[Gloo] Rank 0 is connected to 1 peer ranks. Expected number of connected peer ranks is : 1
E1206 03:23:37.882840   32672 coordination_service.cc:1549] Use error polling to propagate the following error to all tasks: UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):
1
The tasks have crashed. Check the task logs for an earlier error.
F1206 03:23:37.884003   32683 client.h:80] Terminating process because the JAX distributed service detected fatal errors. absl::Status: INTERNAL: Barrier failed because: task is set to ERROR: UNAVAILABLE: Task 1 heartbeat timeout.
*** Check failure stack trace: ***
    @     0x7f3b2b240634  absl::lts_20260107::log_internal::LogMessage::SendToLog()
"""


def kept():
  return "the last checkpoint, step 2 in /w/checkpoints, is intact"


def test_an_abort_over_a_lost_peer_is_one_line_and_run_again():
  line, code = supervisor.verdict(-signal.SIGABRT, NATIVE_LOG, "/logs/n.log", kept)
  assert code == EXIT_PREEMPTED
  assert line == ("process 1 of 2 was lost (the distributed runtime stopped hearing from it: "
                  "killed, preempted or its host failed); the last checkpoint, step 2 in "
                  "/w/checkpoints, is intact; run the same command again (this process's native "
                  "log: /logs/n.log)")
  # the coordinator itself lost: the survivors' logs name no task
  coordinator_gone = ("plm-jax: process 1 of 2\nF1206 03:56:23.929018   17606 client.h:80] "
                      "Terminating process because the JAX distributed service detected fatal "
                      "errors. This most likely indicates that another task died\n:UNKNOWN:Error "
                      'received from peer  {grpc_message:"Socket closed", grpc_status:14}\n')
  line, code = supervisor.verdict(-signal.SIGABRT, coordinator_gone, "n.log", kept)
  assert code == EXIT_PREEMPTED and line.startswith("the coordinator (process 0 of 2)")


def test_other_ends_of_a_supervised_process(capsys):
  # its own status (a one-line error, a preemption it handled) passes through, silently
  assert supervisor.verdict(3, NATIVE_LOG, "n.log", kept) == (None, 3)
  assert supervisor.verdict(0, "", "n.log", kept) == (None, 0)
  # SIGTERM before any handler (start-up): resume
  line, code = supervisor.verdict(-signal.SIGTERM, "plm-jax: process 1 of 2\n", "n.log", kept)
  assert code == EXIT_PREEMPTED and line.startswith("stopped by SIGTERM while starting up")
  # killed, or a crash that is not about a peer: not "run again"; a crash shows its log's tail
  line, code = supervisor.verdict(-signal.SIGKILL, "plm-jax: process 1 of 2\n", "n.log", kept)
  assert code == 137 and line.startswith("process 1 of 2 was killed (SIGKILL")
  line, code = supervisor.verdict(-signal.SIGSEGV, "boom\n", "n.log", kept)
  assert code == 128 + signal.SIGSEGV and "died by SIGSEGV" in line
  assert "boom" in capsys.readouterr().err


def test_the_launcher_reports_what_a_process_chose_over_a_peer_killed_by_a_signal():
  assert launch_local.run_status([]) == 0
  assert launch_local.run_status([-9, 75]) == 75       # process 1 killed; 0: run again
  assert launch_local.run_status([137, 75]) == 75
  assert launch_local.run_status([1, 75]) == 1         # a failure to fix is not requeued
  assert launch_local.run_status([-9, -6]) == 137
  # ended by the SIGTERM the launcher forwarded, before it could handle one: run again
  assert launch_local.run_status([-15, 143], forwarded=[signal.SIGTERM]) == EXIT_PREEMPTED
  assert launch_local.run_status([-15]) == 143        # a SIGTERM from elsewhere: not ours
  assert launch_local.EXIT_PREEMPTED == EXIT_PREEMPTED


def test_a_long_native_log_is_read_by_its_ends(tmp_path):
  log = tmp_path / "n.log"
  log.write_text("plm-jax: process 0 of 2\n" + "x" * 3_000_000 + "\n" +
                 NATIVE_LOG.split("\n", 1)[1])
  text = supervisor._read(str(log))
  assert len(text) < 1_100_000 and "process 0 of 2" in text and "Task 1 heartbeat" in text
