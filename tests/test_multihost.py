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
from plm_jax import cli
from plm_jax.hardware import distributed
from plm_jax.errors import ConfigError

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
def test_a_dead_process_stops_the_other(tmp_path, tokenizers_dir):
  """Kill process 1 mid-run: process 0 must exit with an error by itself, within bounded time
  (jax's heartbeat), not hang in a collective."""
  logs = tmp_path / "logs"
  args = train_args("gpt", tmp_path / "run", tokenizers_dir["gpt"], steps=100000)
  proc = subprocess.Popen(launcher(*args, log_dir=logs, heartbeat=5), cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    os.kill(pid, signal.SIGKILL)
    killed_at = time.time()
    code = proc.wait(timeout=100)
    elapsed = time.time() - killed_at
  finally:
    if proc.poll() is None:
      proc.kill()
  assert code != 0
  # The launcher would kill process 0 only after its 120 s grace: it stopped on its own.
  assert elapsed < 60, elapsed
  assert "another task died" in log0.read_text() or "crashed" in log0.read_text() or \
      "Terminating process" in log0.read_text()


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
