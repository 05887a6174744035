"""Long runs lose nothing: signals, divergence, hangs, a second trainer, a failing save, and the
bad inputs that must end in one line, exit 2 and an untouched workdir."""

import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from helpers import ROOT, family_config, snapshot
from plm_jax import cli, workdir as workdirs
from plm_jax.commands import pretrain
from plm_jax.data import loader
from plm_jax.inference import load_params
from plm_jax.run import checkpoint
from plm_jax.run.lock import LOCK_FILE, WorkdirLocked
from plm_jax.run.stopping import (EXIT_DIVERGED, EXIT_PREEMPTED, EXIT_SAVE_FAILED, Diverged, SaveFailed)
from plm_jax.run.watchdog import EXIT_HANG

# Whole runs with faults injected: the end-to-end level (-m e2e).
pytestmark = pytest.mark.e2e

BERT = os.path.join(ROOT, "configs", "bert.py")
GPT = os.path.join(ROOT, "configs", "gpt.py")


def records(workdir, split="train") -> list[dict]:
  return [r for r in map(json.loads, open(os.path.join(workdir, "metrics.jsonl")))
          if r["split"] == split]


def finite(params) -> bool:
  return all(bool(np.isfinite(np.asarray(x)).all()) for x in jax.tree.leaves(params))


def train_args(workdir, tokenizer, steps, config=BERT, *extra):
  return ["train", "--config", f"{config}:tiny", "--workdir", str(workdir),
          f"--config.train.steps={steps}", "--config.train.log_every=1",
          "--config.train.eval_steps=1", f"--config.data.tokenizer={tokenizer}",
          "--config.data.dupe_factor=1", "--config.checkpoint.every=1000", *extra]


# --- preemption ----------------------------------------------------------------------------------

def signal_at_a_random_step(command, log, signum, low, high, seed):
  """Starts `command`, sends `signum` when the log shows a step in [low, high] (chosen from
  `seed`), returns (exit status, output, the step signalled at)."""
  at = random.Random(seed).randint(low, high)
  with open(log, "w") as out:
    proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
  try:
    deadline = time.time() + 240
    while time.time() < deadline:
      text = open(log).read()
      if re.search(rf"step {at}/", text):
        break
      assert proc.poll() is None, text[-3000:]
      time.sleep(0.05)
    else:
      pytest.fail("the run did not reach the step to signal at")
    os.kill(proc.pid, signum)
    code = proc.wait(timeout=120)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  return code, open(log).read(), at


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tokenizers_dir):
  workdir = tmp_path_factory.mktemp("straight") / "run"
  assert cli.main(["plm-jax", *train_args(workdir, tokenizers_dir["bert"], 12)]) == 0
  return records(workdir)


@pytest.fixture
def dispositions():
  """What SIGINT and SIGTERM did before the test, put back after it (a test that installs a
  handler leaves the suite as it found it: started with SIGINT ignored, it stays so)."""
  before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
  yield before
  for s, handler in before.items():
    signal.signal(s, handler)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_step_reached_and_the_run_resumes_exactly(
    signum, uninterrupted, tokenizers_dir, tmp_path, monkeypatch, capsys, dispositions):
  """The signal arrives (from this process, as a scheduler's would) while the batch of a
  random step is being prepared: from step 5 on, which the loader prepares only once the loop
  (and so the handlers) runs, as data.prefetch = 4 batches are prepared ahead. Ctrl-C as a
  terminal delivers it: Python's handler, whatever this test process was started with."""
  if signum == signal.SIGINT:
    signal.signal(signal.SIGINT, signal.default_int_handler)
  installed = signal.getsignal(signum)
  at = random.Random(int(signum)).randint(5, 10)
  original = loader.Batches.batch

  def batch(self, step):
    if self.split == loader.TRAIN and step == at:
      os.kill(os.getpid(), signum)
    return original(self, step)
  monkeypatch.setattr(loader.Batches, "batch", batch)
  workdir = tmp_path / "run"
  assert cli.main(["plm-jax", *train_args(workdir, tokenizers_dir["bert"], 12)]) == \
      EXIT_PREEMPTED
  err = capsys.readouterr().err
  stopped = int(re.search(r"preempted at step (\d+) \(SIG\w+\): checkpoint saved in \S+; run "
                          r"the same command to resume", err).group(1))
  # the batches are prepared ahead (data.prefetch): the step in flight is at most a few back
  assert at - 5 <= stopped <= at + 1, (at, stopped)
  assert checkpoint.latest_step(str(workdir)) == stopped
  assert signal.getsignal(signum) == installed          # the run's handler is gone again
  monkeypatch.setattr(loader.Batches, "batch", original)
  assert cli.main(["plm-jax", *train_args(workdir, tokenizers_dir["bert"], 12)]) == 0
  resumed = records(workdir)
  assert [r["step"] for r in resumed] == list(range(1, 13))     # one record per step
  np.testing.assert_array_equal([r["loss"] for r in resumed],
                                [r["loss"] for r in uninterrupted])
  assert [r for r in map(json.loads, open(workdir / "metrics.jsonl"))
          if r["split"] == "resume"][0]["step"] == stopped


def test_a_sigint_ignored_from_the_start_stays_ignored(tokenizers_dir, tmp_path, monkeypatch,
                                                      dispositions):
  """A job started in the background (`&` in a script, nohup, some CI runners) inherits an
  ignored SIGINT: the run neither takes it over nor stops on it; SIGTERM still stops it."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  original = loader.Batches.batch

  def batch(self, step):
    if self.split == loader.TRAIN and step == 5:
      os.kill(os.getpid(), signal.SIGINT)
    return original(self, step)
  monkeypatch.setattr(loader.Batches, "batch", batch)
  workdir = tmp_path / "run"
  assert cli.main(["plm-jax", *train_args(workdir, tokenizers_dir["gpt"], 8, GPT)]) == 0
  assert [r["step"] for r in records(workdir)] == list(range(1, 9))
  assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
  assert signal.getsignal(signal.SIGTERM) == dispositions[signal.SIGTERM]


def test_the_signal_tests_pass_started_with_sigint_ignored_and_no_terminal():
  """The suite as a background job or a CI runner starts it: SIGINT ignored (inherited through
  exec), no terminal (a session of its own, stdin from /dev/null)."""
  ignoring = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
              "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")
  here = os.path.join(ROOT, "tests", "test_faults.py")
  done = subprocess.run(
      [sys.executable, "-c", ignoring, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
       f"{here}::test_a_signal_saves_the_step_reached_and_the_run_resumes_exactly[2]",
       f"{here}::test_a_sigint_ignored_from_the_start_stays_ignored"], cwd=ROOT,
      capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
      start_new_session=True)
  assert done.returncode == 0, done.stdout[-3000:]
  assert "2 passed" in done.stdout, done.stdout[-3000:]


def test_sigterm_at_start_up_or_in_the_final_evaluation_is_one_line_and_75(
    tokenizers_dir, tmp_path, monkeypatch, capsys, dispositions):
  """Before step 1 (while the step compiles) and after the last (in the final evaluation) a
  SIGTERM ends the command as one during the steps does: one line, exit 75, the last
  checkpoint intact; the same command then finishes the run, with one record per step and
  one final evaluation."""
  from plm_jax.trainer import Trainer
  compile_step, evaluate = Trainer.compile_train_step, pretrain.evaluate_params

  def compile_signalled(self):
    os.kill(os.getpid(), signal.SIGTERM)
    return compile_step(self)
  monkeypatch.setattr(Trainer, "compile_train_step", compile_signalled)
  workdir = tmp_path / "run"
  args = train_args(workdir, tokenizers_dir["gpt"], 4, GPT, "--config.train.eval_every=0")
  assert cli.main(["plm-jax", *args]) == EXIT_PREEMPTED
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "Traceback" not in err, err
  assert ("stopped by SIGTERM outside the training steps (starting up, or in the final "
          "evaluation): nothing of the run was lost; run the same command to resume") in err
  assert checkpoint.latest_step(str(workdir)) is None
  monkeypatch.setattr(Trainer, "compile_train_step", compile_step)

  def evaluate_signalled(*a, **k):
    os.kill(os.getpid(), signal.SIGTERM)
    return evaluate(*a, **k)
  monkeypatch.setattr(pretrain, "evaluate_params", evaluate_signalled)
  assert cli.main(["plm-jax", *args]) == EXIT_PREEMPTED
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "Traceback" not in err, err
  assert (f"in the final evaluation): the last checkpoint, step 4 in "
          f"{checkpoint.checkpoint_dir(str(workdir))}, is intact") in err
  assert checkpoint.latest_step(str(workdir)) == 4 and not records(workdir, "eval")
  assert signal.getsignal(signal.SIGTERM) == dispositions[signal.SIGTERM]
  monkeypatch.setattr(pretrain, "evaluate_params", evaluate)
  assert cli.main(["plm-jax", *args]) == 0
  assert "resumed from step 4" in capsys.readouterr().out
  assert [r["step"] for r in records(workdir)] == [1, 2, 3, 4]
  assert [r["step"] for r in records(workdir, "eval")] == [4]


def test_sigterm_while_a_process_starts_is_one_line_and_75(tokenizers_dir, tmp_path):
  """A real process, signalled while it reads its data (before any step)."""
  command = [sys.executable, "-m", "plm_jax.cli",
             *train_args(tmp_path / "run", tokenizers_dir["gpt"], 4, GPT)]
  log = tmp_path / "log"
  with open(log, "w") as out:
    proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
  try:
    deadline = time.time() + 200
    while "data:" not in open(log).read() and time.time() < deadline:
      assert proc.poll() is None, open(log).read()[-3000:]
      time.sleep(0.02)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == EXIT_PREEMPTED, open(log).read()[-3000:]
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  text = open(log).read()
  assert "Traceback" not in text and text.splitlines()[-1].startswith(
      "plm-jax train: stopped by SIGTERM outside the training steps"), text[-3000:]


@pytest.mark.parametrize("moment", ["start-up", "distributed"])
def test_sigterm_while_two_processes_start_is_one_line_each_and_75(tokenizers_dir, tmp_path,
                                                                   moment):
  """A preemption before step 1 of a 2-process run (SIGTERM to every process, through the
  launcher): at once ("start-up": the processes just started, their interpreters may not
  handle a signal yet) or once both have joined the run ("distributed": JAX's preemption
  service holds SIGTERM). Each process says at most one line (stopped while starting, or
  preempted at step 1 with a checkpoint; none when the signal ended its interpreter before
  any handler, which the launcher then says), no traceback; the launcher exits 75; the same
  command then resumes a run stopped at step 1."""
  logs = tmp_path / "logs"
  command = [sys.executable, "-m", "plm_jax.launch_local", "--num-processes", "2",
             "--devices-per-process", "4", "--log-dir", str(logs), "--grace", "60", "--",
             sys.executable, "-m", "plm_jax.cli",
             *train_args(tmp_path / "run", tokenizers_dir["gpt"], 2, GPT)]
  out = tmp_path / "out"
  with open(out, "w") as sink:
    proc = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT,
                            start_new_session=True)
  wanted = "[launch_local]" if moment == "start-up" else "[1] [process 1/2]"
  try:
    deadline = time.time() + 200
    while time.time() < deadline:
      text = open(out).read()
      if moment == "start-up" and all((logs / f"process_{i}.log").exists() for i in (0, 1)):
        break
      if wanted in text and "[0] [process 0/2]" in text:
        break
      assert proc.poll() is None, text[-3000:]
      time.sleep(0.05)
    assert "step 1/" not in open(out).read(), "too late: the run reached its first step"
    os.kill(proc.pid, signal.SIGTERM)
    code = proc.wait(timeout=240)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  said = open(out).read()
  assert code == EXIT_PREEMPTED, said[-4000:]
  assert "Traceback" not in said and "Check failure" not in said, said[-3000:]
  ends = []
  for i in (0, 1):
    lines = [l for l in (logs / f"process_{i}.log").read_text().splitlines() if l.strip()]
    verdicts = [l for l in lines if l.startswith("plm-jax train: ")]
    assert len(verdicts) <= 1 and lines[-1:] == verdicts, (i, lines[-5:])
    ends += verdicts
  one_line = (r"plm-jax train: (stopped by SIGTERM while starting up \(before its training "
              r"steps\): nothing of the run was lost; run the same command to resume|preempted "
              r"at step 1 \(a preemption notice\): checkpoint saved)")
  assert all(re.match(one_line, l) for l in ends), ends
  if moment == "distributed":
    assert len(ends) == 2, said[-3000:]          # both were running plm-jax: both say it
  if not ends:                                   # the launcher says it for them
    assert said.rstrip().splitlines()[-1].startswith(
        "[launch_local] stopped by SIGTERM while the processes were starting"), said[-3000:]
  if moment == "distributed":                    # (at start-up nothing was saved to resume)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "resumed from step 1" in done.stdout and re.search(r"^\[0\] step 2/2", done.stdout,
                                                              re.M)


def test_two_processes_stop_at_the_same_step_and_resume(tokenizers_dir, tmp_path):
  """SIGTERM to the launcher reaches both processes; JAX's preemption service makes them save
  the same step; two processes resume it with exactly the losses of an uninterrupted 2-process
  run."""
  def command_for(workdir):
    return [sys.executable, "-m", "plm_jax.launch_local", "--num-processes", "2",
            "--devices-per-process", "4", "--log-dir", str(tmp_path / "logs"), "--grace", "60",
            "--", sys.executable, "-m", "plm_jax.cli",
            *train_args(workdir, tokenizers_dir["gpt"], 10, GPT)]
  workdir = tmp_path / "run"
  command = command_for(workdir)
  code, out, _ = signal_at_a_random_step(command, tmp_path / "log", signal.SIGTERM, 2, 5, seed=1)
  assert code == EXIT_PREEMPTED, out[-4000:]
  steps = {int(s) for s in re.findall(r"preempted at step (\d+)", out)}
  assert len(steps) == 1, out[-3000:]             # process 0 says it; both saved that step
  stopped = steps.pop()
  assert checkpoint.latest_step(str(workdir)) == stopped
  done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stdout[-3000:]
  assert f"resumed from step {stopped}" in done.stdout
  reference = tmp_path / "straight"
  done = subprocess.run(command_for(reference), cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stdout[-3000:]
  got, want = records(workdir), records(reference)
  assert [r["step"] for r in got] == list(range(1, 11))
  np.testing.assert_array_equal([r["loss"] for r in got], [r["loss"] for r in want])


def test_checkpoints_by_time(tmp_path, tokenizers_dir, monkeypatch):
  """checkpoint.every_seconds saves between the step-based saves."""
  from plm_jax.run.scaffold import Run
  clock = iter(range(0, 10_000, 11))         # every reading: 11 "seconds" later
  monkeypatch.setattr(Run, "clock", staticmethod(lambda: next(clock)))
  config = family_config("gpt", **{"train.steps": 6, "checkpoint.every": 1000,
                                   "checkpoint.every_seconds": 20, "checkpoint.keep": 10,
                                   "data.tokenizer": tokenizers_dir["gpt"]})
  pretrain.train(config, str(tmp_path / "run"))
  saved = checkpoint.make_manager(str(tmp_path / "run"), read_only=True).all_steps()
  assert sorted(saved) == [2, 4, 6]


# --- resuming on a machine of another size ---------------------------------------------------------

def consumed_rows(monkeypatch) -> list:
  """The input rows of every train batch the step loop takes, in order (not those prefetched)."""
  rows = []
  original = loader.Prefetcher.__next__

  def taken(self):
    batch = original(self)
    rows.extend(np.asarray(batch["input_ids"]).tolist())
    return batch
  monkeypatch.setattr(loader.Prefetcher, "__next__", taken)
  return rows


def test_another_batch_size_goes_on_with_the_examples_not_yet_seen(tokenizers_dir, tmp_path,
                                                                  monkeypatch, capsys):
  """3 steps of 16 examples, then 6 of 8: the 96 examples of 6 steps of 16, in order: none
  repeated, none skipped; the checkpoint keeps the position in examples."""
  rows = consumed_rows(monkeypatch)
  def args(workdir, steps, batch):
    return ["plm-jax", *train_args(workdir, tokenizers_dir["gpt"], steps, GPT,
                                   f"--config.train.batch_size={batch}")]
  assert cli.main(args(tmp_path / "straight", 6, 16)) == 0
  want = list(rows)
  assert len(want) == 96 and len({tuple(r) for r in want}) > 80      # mostly distinct rows
  rows.clear()
  workdir = tmp_path / "run"
  assert cli.main(args(workdir, 3, 16)) == 0
  assert len(rows) == 48
  capsys.readouterr()
  assert cli.main(args(workdir, 9, 8)) == 0
  assert ("data: resumed at example 48 of the training stream, saved with another batch size "
          "(now 8 per step)") in capsys.readouterr().out
  assert rows == want
  meta = checkpoint.read_meta(checkpoint.make_manager(str(workdir), read_only=True), 9)
  assert meta["data_iterator"] == {"next_index": 9, "next_example": 96}


def cut_back(workdir, to, step):
  """A copy of `workdir` as it was when only the checkpoint of `step` was written (a run
  stopped there): the later checkpoints removed (the resumed run drops the later records)."""
  import shutil
  shutil.copytree(workdir, to)
  for name in os.listdir(to / "checkpoints"):
    if name.isdigit() and int(name) > step:
      shutil.rmtree(to / "checkpoints" / name)
  return to


def test_resuming_on_fewer_devices_matches_the_uninterrupted_run(tokenizers_dir, tmp_path):
  """8 simulated devices to step 3, then 4 for the rest: the losses of 8 devices all along
  (within 1e-5: the reductions run over another split of the batch)."""
  config = family_config("gpt", **{"train.steps": 6, "train.log_every": 1,
                                   "train.batch_size": 16, "checkpoint.every": 3,
                                   "data.tokenizer": tokenizers_dir["gpt"]})
  straight = tmp_path / "straight"
  pretrain.train(config, str(straight))
  run = cut_back(straight, tmp_path / "run", 3)
  pretrain.train(config, str(run), devices=jax.devices()[:4])
  got, want = records(run), records(straight)
  assert [r["step"] for r in got] == list(range(1, 7))
  np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in want], atol=1e-5,
                             rtol=0)


def test_resuming_on_another_number_of_processes_matches(tokenizers_dir, tmp_path):
  """2 processes (4 devices each) to step 3, then 1 process (8 devices), and 1 then 2: the
  same global batches row for row, the losses of one process all along within 1e-5."""
  def one(workdir):
    args = train_args(workdir, tokenizers_dir["gpt"], 6, GPT, "--config.train.batch_size=16")
    return [sys.executable, "-m", "plm_jax.cli",
            *[a for a in args if a != "--config.checkpoint.every=1000"],
            "--config.checkpoint.every=3"]

  def two(workdir):
    return [sys.executable, "-m", "plm_jax.launch_local", "--num-processes", "2",
            "--devices-per-process", "4", "--log-dir", str(tmp_path / "logs"), "--",
            *one(workdir)]

  def run(command):
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done.stdout
  run(one(tmp_path / "one"))
  run(two(tmp_path / "two"))
  want = [r["loss"] for r in records(tmp_path / "one")]
  for first, then, name in ((tmp_path / "two", one, "two-then-one"),
                            (tmp_path / "one", two, "one-then-two")):
    workdir = cut_back(first, tmp_path / name, 3)
    assert "resumed from step 3" in run(then(workdir))
    got = records(workdir)
    assert [r["step"] for r in got] == list(range(1, 7))
    np.testing.assert_allclose([r["loss"] for r in got], want, atol=1e-5, rtol=0,
                               err_msg=name)


# --- divergence ----------------------------------------------------------------------------------

def poison(monkeypatch, steps):
  """The train batches of `steps` (0-based) get NaN label weights: a NaN loss and gradient."""
  original = loader.Batches.batch

  def batch(self, step):
    out = original(self, step)
    if self.split == loader.TRAIN and step in steps:
      out = {**out, "label_weights": np.full_like(out["label_weights"], np.nan)}
    return out
  monkeypatch.setattr(loader.Batches, "batch", batch)


def gpt(tokenizers_dir, **overrides):
  return family_config("gpt", **{"train.steps": 6, "checkpoint.every": 2, "checkpoint.keep": 10,
                                 "data.tokenizer": tokenizers_dir["gpt"], **overrides})


def test_stop_saves_the_last_finite_state_and_names_the_step(tmp_path, tokenizers_dir,
                                                              monkeypatch):
  reference = str(tmp_path / "reference")
  pretrain.train(gpt(tokenizers_dir, **{"checkpoint.every": 1}), reference)
  poison(monkeypatch, {3})                                   # the 4th step
  workdir = str(tmp_path / "run")
  with pytest.raises(Diverged, match=r"step 4 had a non-finite loss or gradient \(loss nan.*"
                                     r"checkpoint of step 3, the last finite state"):
    pretrain.train(gpt(tokenizers_dir), workdir)
  assert checkpoint.latest_step(workdir) == 3
  got, want = load_params(workdir, 3), load_params(reference, 3)
  jax.tree.map(np.testing.assert_array_equal, got.params, want.params)
  meta = checkpoint.read_meta(checkpoint.make_manager(workdir, read_only=True), 3)
  batch = gpt(tokenizers_dir).train.batch_size
  assert meta["data_iterator"] == {"next_index": 3, "next_example": 3 * batch}
  assert meta["diverged_at"] == 4


def test_skip_drops_the_update_counts_it_and_goes_on(tmp_path, tokenizers_dir, monkeypatch):
  poison(monkeypatch, {2})
  workdir = str(tmp_path / "run")
  final = pretrain.train(gpt(tokenizers_dir, **{"train.nonfinite": "skip"}), workdir)
  assert np.isfinite(final["loss"])
  train = records(workdir)
  assert [r["skipped_steps"] for r in train] == [0, 0, 1, 0, 0, 0]
  # means over the applied steps: the skipped step's line has no loss
  assert "loss" not in train[2] and all(np.isfinite(r["loss"]) for r in train if r is not
                                        train[2])
  assert finite(load_params(workdir).params)
  # past max_consecutive_skips it stops, with the last finite state saved
  poison(monkeypatch, {1, 2, 3, 4})
  with pytest.raises(Diverged, match=r"3 steps in a row \(up to step 4\).*"
                                     r"max_consecutive_skips=2.*checkpoint of step 3"):
    pretrain.train(gpt(tokenizers_dir, **{"train.nonfinite": "skip",
                                          "train.max_consecutive_skips": 2}),
                   str(tmp_path / "many"))


@pytest.mark.parametrize("keep", [2, 1])
def test_a_good_run_continued_at_a_divergent_rate_keeps_a_good_checkpoint(tmp_path,
                                                                          tokenizers_dir,
                                                                          capsys, keep):
  """At learning rate 1e4 the losses grow huge before they stop being finite: the first one
  over train.spike_factor x the running level stops the run, and the checkpoint it leaves to
  resume from evaluates as the good run did (not to the huge loss), however many checkpoints
  the diverging steps saved (one every step) and however few are kept (keep=1: the one before
  the newest must outlive it until the step after the newest shows no spike)."""
  workdir = tmp_path / "run"
  args = train_args(workdir, tokenizers_dir["gpt"], 12, GPT, "--config.checkpoint.every=4",
                    f"--config.checkpoint.keep={keep}")
  assert cli.main(["plm-jax", *args]) == 0
  good = records(workdir, "eval")[-1]["loss"]
  more = [a for a in args if "train.steps" not in a and "checkpoint.every" not in a]
  capsys.readouterr()
  code = cli.main(["plm-jax", *more, "--config.train.steps=40", "--config.checkpoint.every=1",
                   "--config.optim.learning_rate=1e4", "--config.optim.warmup_steps=0"])
  err = capsys.readouterr().err
  assert code == EXIT_DIVERGED, err
  spiked = int(re.search(r"step (\d+) had a loss spike \(loss [\d.e+]+, gradient norm "
                         r"[\d.e+]+: a spike over 100 x the running loss level", err).group(1))
  named = re.search(r"checkpoint of step (\d+), the last before the update that spiked", err)
  assert named, err
  kept = int(named.group(1))
  assert 12 <= kept <= spiked - 2 and checkpoint.latest_step(str(workdir)) == kept
  if keep == 2:
    assert checkpoint.complete_steps(str(workdir)) == [kept - 1, kept] or kept == 12
  assert checkpoint.complete_steps(str(workdir))[-1] == kept
  # the suspect ones are set aside, not deleted
  aside = sorted(int(n.split("-")[1]) for n in os.listdir(checkpoint.checkpoint_dir(
      str(workdir))) if n.startswith("spiked-"))
  assert aside and aside[0] == kept + 1 and aside[-1] <= spiked - 1, aside
  capsys.readouterr()
  assert cli.main(["plm-jax", "evaluate", "--workdir", str(workdir)]) == 0
  loss = float(re.search(r"loss ([\d.]+)", capsys.readouterr().out).group(1))
  assert loss < 2 * good, (loss, good)


def test_a_save_in_flight_at_a_spike_is_set_aside_too(tmp_path):
  """The newest checkpoint may still be saving (async) when a spike is seen: it is of a suspect
  state like the others after the good one, and must not stay behind as the newest one, the
  one a resume takes (the halt line would name the step before it)."""
  from plm_jax.run.scaffold import Run, SET_ASIDE
  where = tmp_path / "checkpoints"
  (where / "12").mkdir(parents=True)

  class SavingStep13:
    """A manager whose save of step 13 completes when waited for."""
    def wait_until_finished(self):
      (where / "13").mkdir(exist_ok=True)

    def reload(self):
      pass
  run = Run.__new__(Run)
  run.path, run.manager = str(tmp_path), SavingStep13()
  assert run._set_aside_after(12) == 12
  assert checkpoint.complete_steps(str(tmp_path)) == [12]
  assert (where / f"{SET_ASIDE}13").is_dir()


def test_keep_1_keeps_2_while_spikes_are_watched():
  from plm_jax.run.scaffold import kept_checkpoints
  def config(keep, spike_factor):
    return family_config("gpt", **{"checkpoint.keep": keep, "train.spike_factor": spike_factor})
  assert kept_checkpoints(config(1, 100.0)) == 2
  assert kept_checkpoints(config(3, 100.0)) == 3
  assert kept_checkpoints(config(1, 0.0)) == 1        # spikes off: keep as asked


def test_a_spike_is_configurable(tmp_path, tokenizers_dir, capsys):
  assert "train.spike_factor=0.5 must be > 1 (or 0 = off)" in one_line(
      capsys, *train_args(tmp_path / "w", tokenizers_dir["gpt"], 2, GPT,
                          "--config.train.spike_factor=0.5"))
  assert not (tmp_path / "w").exists()


# --- hangs ---------------------------------------------------------------------------------------

STALL = """
import sys, time
from plm_jax import cli
from plm_jax.data import loader
original = loader.Prefetcher.__next__
calls = []
def stalled(self):
  calls.append(1)
  if len(calls) == 4:
    def wait_for_a_dead_filesystem():
      time.sleep(3600)
    wait_for_a_dead_filesystem()
  return original(self)
loader.Prefetcher.__next__ = stalled
sys.exit(cli.main(["plm-jax", *sys.argv[1:]]))
"""


def test_a_stalled_step_trips_the_watchdog(tmp_path, tokenizers_dir):
  args = train_args(tmp_path / "run", tokenizers_dir["gpt"], 50, GPT,
                    "--config.train.step_timeout_s=4")
  t0 = time.time()
  done = subprocess.run([sys.executable, "-c", STALL, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=240)
  assert done.returncode == EXIT_HANG, done.stderr[-3000:]
  assert time.time() - t0 < 200
  assert "watchdog: no progress for" in done.stderr and "after step 3 of" in done.stderr
  assert "wait_for_a_dead_filesystem" in done.stderr        # every thread's stack
  assert "run the same command to resume" in done.stderr


# --- a second trainer ----------------------------------------------------------------------------

def write_lock(workdir, host, pid):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, LOCK_FILE), "w") as f:
    json.dump({"host": host, "pid": pid, "started": "earlier"}, f)


def test_a_second_trainer_is_refused_and_writes_nothing(tmp_path, tokenizers_dir, capsys):
  workdir = tmp_path / "run"
  args = train_args(workdir, tokenizers_dir["gpt"], 2, GPT)
  assert cli.main(["plm-jax", *args]) == 0
  holder = subprocess.Popen(["sleep", "60"])            # a live trainer on this host
  try:
    write_lock(workdir, socket.gethostname(), holder.pid)
    before = snapshot(workdir)
    assert cli.main(["plm-jax", *args[:-1], "--config.train.steps=4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"is in use by another trainer (pid {holder.pid} on host {socket.gethostname()}" in err
    assert snapshot(workdir) == before
  finally:
    holder.kill()
    holder.wait()
  # the same lock, its process dead: taken over (and released when the run ends)
  from plm_jax.run.lock import WorkdirLock
  lock = WorkdirLock(str(workdir))
  assert "took over the lock of a trainer that is gone" in lock.acquire()
  lock.release()
  assert not (workdir / LOCK_FILE).exists()
  # another host's lock is never taken silently
  write_lock(workdir, "another-host", 1)
  with pytest.raises(WorkdirLocked, match="on host another-host.*if that trainer is dead, "
                                          "delete"):
    pretrain.train(family_config("gpt", **{"train.steps": 6,
                                           "data.tokenizer": tokenizers_dir["gpt"]}),
                   str(workdir))


def test_a_requeued_job_or_a_launcher_takes_a_lock_of_another_host(tmp_path, monkeypatch):
  from plm_jax.run.lock import WorkdirLock
  write_lock(tmp_path, "node-7", 4242)
  with open(tmp_path / LOCK_FILE) as f:
    held = {**json.load(f), "slurm_job": "991"}
  (tmp_path / LOCK_FILE).write_text(json.dumps(held))
  with pytest.raises(WorkdirLocked, match="node-7"):
    WorkdirLock(str(tmp_path)).acquire()
  monkeypatch.setenv("SLURM_JOB_ID", "991")          # the same job, requeued elsewhere
  lock = WorkdirLock(str(tmp_path))
  assert "took over" in lock.acquire()
  assert json.load(open(tmp_path / LOCK_FILE))["slurm_job"] == "991"
  lock.release()
  monkeypatch.delenv("SLURM_JOB_ID")
  write_lock(tmp_path, "tpu-worker-gone", 17)
  monkeypatch.setenv("PLM_JAX_BREAK_LOCK", "1")      # the launcher recreated the VM
  assert "took over" in WorkdirLock(str(tmp_path)).acquire()


# --- a failing save ------------------------------------------------------------------------------

@contextlib.contextmanager
def tmpfs(path, size):
  os.makedirs(path, exist_ok=True)
  done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                        capture_output=True, text=True)
  if done.returncode:
    pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
  try:
    yield path
  finally:
    subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_disk_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, tokenizers_dir,
                                                                  capsys):
  """A disk with room for the run's files and two checkpoints, not three."""
  sized = tmp_path / "sized"
  assert cli.main(["plm-jax", *train_args(sized, tokenizers_dir["gpt"], 2, GPT,
                                          "--config.checkpoint.every=2")]) == 0
  usage = lambda path: sum(os.path.getsize(os.path.join(r, f))  # noqa: E731
                           for r, _, fs in os.walk(path) for f in fs)
  one = usage(sized / "checkpoints" / "2")
  rest = usage(sized) - one
  capsys.readouterr()
  with tmpfs(tmp_path / "disk", f"{(rest + int(2.5 * one)) // 1024 + 64}k") as disk:
    args = train_args(disk / "run", tokenizers_dir["gpt"], 30, GPT,
                      "--config.checkpoint.every=2", "--config.checkpoint.keep=10")
    code = cli.main(["plm-jax", *args])
    err = capsys.readouterr().err
    assert code == EXIT_SAVE_FAILED, err
    assert "Traceback" not in err, err[:3000]
    assert "No space left on device" in err.splitlines()[-1]
    last = int(re.search(r"the last complete checkpoint is step (\d+)", err).group(1))
    assert last >= 2
    assert finite(load_params(str(disk / "run"), last).params)


def test_a_failing_save_stops_at_once(tmp_path, tokenizers_dir, monkeypatch):
  """An error of the (asynchronous) save is reported when it is seen, not at the end."""
  from orbax.checkpoint import checkpoint_manager
  original = checkpoint_manager.CheckpointManager.check_for_errors
  failing = {"armed": False}

  def check(self):
    if failing["armed"]:
      raise OSError(28, "No space left on device")
    return original(self)
  monkeypatch.setattr(checkpoint_manager.CheckpointManager, "check_for_errors", check)
  original_save = checkpoint.save

  def save(manager, step, state, meta):
    original_save(manager, step, state, meta)
    failing["armed"] = step >= 4
  monkeypatch.setattr(checkpoint, "save", save)
  workdir = str(tmp_path / "run")
  with pytest.raises(SaveFailed, match=r"checkpoint of step 4 could not be written.*No space "
                                       r"left on device.*the last complete checkpoint is step"):
    pretrain.train(gpt(tokenizers_dir, **{"train.steps": 20}), workdir)
  assert len(records(workdir)) <= 5            # stopped at the step after the failed save


# --- bad input: one line, exit 2, workdir untouched ---------------------------------------------

@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory, tokenizers_dir):
  workdir = tmp_path_factory.mktemp("bad") / "gpt"
  assert cli.main(["plm-jax", *train_args(workdir, tokenizers_dir["gpt"], 2, GPT)]) == 0
  return workdir


def one_line(capsys, *argv) -> str:
  code = cli.main(["plm-jax", *argv])
  err = capsys.readouterr().err
  assert code == 2, err
  assert err.count("\n") == 1 and "Traceback" not in err, err
  return err


def test_bad_inputs_are_one_line_and_leave_the_workdir_untouched(gpt_run, tmp_path, capsys,
                                                                 tokenizers_dir):
  before = snapshot(gpt_run)
  for batch in (0, -4):
    err = one_line(capsys, "train", "--workdir", str(gpt_run), f"--config.train.batch_size={batch}")
    assert f"train.batch_size={batch} must be positive; use --config.train.batch_size=" in err
  err = one_line(capsys, "train", "--workdir", str(gpt_run), "--config.optim.clip_norm=0",
                 "--config.train.steps=4")
  assert "optim.clip_norm: saved 1.0, now 0" in err and "the checkpoint is intact" in err
  assert "corrupt" not in err
  for flag, words in ((["--max-new-tokens", "500"], "exceed the model's 128 positions; use "
                       "--max-new-tokens"), (["--temperature", "-1"], "--temperature -1.0 must "
                       "be >= 0"), (["--top-p", "1.5"], "--top-p 1.5 must be in (0, 1]"),
                      (["--repetition-penalty", "0"], "--repetition-penalty 0.0 must be > 0"),
                      (["--no-repeat-ngram-size", "-2"], "--no-repeat-ngram-size -2 must be "
                       ">= 0")):
    err = one_line(capsys, "generate", "--workdir", str(gpt_run), "--prompt", "def", *flag)
    assert words in err, err
  err = one_line(capsys, "finetune", "--config", f"{ROOT}/configs/classify.py:builtin",
                 "--init-from", str(tmp_path / "missing"), "--workdir", str(tmp_path / "ft"))
  assert "--init-from" in err and "holds no plm-jax run" in err and "--workdir" not in err
  assert not (tmp_path / "ft").exists()
  err = one_line(capsys, "train", "--config", f"{GPT}:tiny", "--workdir", str(tmp_path / "z"),
                 "--config.train.steps=0")
  assert "train.steps=0 leaves nothing to train in a fresh --workdir" in err
  assert not (tmp_path / "z").exists()
  # a vocabulary smaller than the corpus' alphabet: the trainer would silently make it larger
  err = one_line(capsys, "train", "--config", f"{GPT}:tiny", "--workdir", str(tmp_path / "z"),
                 "--config.data.vocab_size=10")
  needed = int(re.search(r"data.vocab_size=10 is below the ([\d,]+) entries a bpe vocabulary "
                         r"of this corpus needs", err).group(1).replace(",", ""))
  assert needed > 10 and f"use --config.data.vocab_size={needed} or more" in err
  assert not (tmp_path / "z").exists()
  # a body without a checkpoint: refused before the new workdir is made
  import shutil
  empty = tmp_path / "no-checkpoint"
  shutil.copytree(gpt_run, empty, ignore=shutil.ignore_patterns("checkpoints"))
  pairs = tmp_path / "pairs.jsonl"       # valid data: the missing checkpoint is the one mistake
  pairs.write_text("".join(json.dumps({"source": "a b", "target": "b a"}) + "\n"
                           for _ in range(4)))
  err = one_line(capsys, "finetune", "--config", f"{ROOT}/configs/seq2seq.py", "--init-from",
                 str(empty), "--workdir", str(tmp_path / "ft"),
                 *(f"--config.finetune.{split}_path={pairs}" for split in ("train", "eval")))
  assert f"--init-from {str(empty)!r} holds no checkpoint yet" in err
  assert not (tmp_path / "ft").exists()
  assert snapshot(gpt_run) == before


@pytest.mark.parametrize("source, words", [
    ("def get_config(arg=None):\n  return {\n", ", line 2: '{' was never closed; fix that line"),
    ("def get_config(arg=None):\n  return {}\n", ": get_config('tiny') returned dict {}, not an "
     "ml_collections.ConfigDict; return one"),
    ("x = 1\n", " defines no get_config; a config file is Python whose get_config(arg)"),
    ("import no_such_module_here\n", ", line 1: ModuleNotFoundError: No module named "
     "'no_such_module_here'; fix the file"),
    ("def get_config(arg=None):\n  n = 1\n  return n / 0\n", ", line 3: ZeroDivisionError"),
])
def test_a_config_file_with_a_mistake_is_one_line_naming_file_and_line(tmp_path, capsys, source,
                                                                        words):
  path = tmp_path / "mine.py"
  path.write_text(source)
  for command in ("train", "config"):
    err = one_line(capsys, command, "--config", f"{path}:tiny", "--workdir", str(tmp_path / "w"))
    assert f"--config {path}{words}" in err, err
  assert not (tmp_path / "w").exists()


def test_a_finished_run_run_again_changes_nothing_and_says_so(gpt_run, tokenizers_dir, capsys):
  args = train_args(gpt_run, tokenizers_dir["gpt"], 2, GPT)
  before = snapshot(gpt_run)
  evals = [r for r in records(gpt_run, "eval") if r["step"] == 2]
  assert len(evals) == 1
  assert cli.main(["plm-jax", *args]) == 0
  out = capsys.readouterr().out
  assert f"nothing to do: {gpt_run} is finished (checkpoint at step 2 >= train.steps=2" in out
  assert snapshot(gpt_run) == before            # no resume record, no second evaluation
  # the library call returns the recorded final evaluation
  final = pretrain.train(workdirs.load_config(str(gpt_run)), str(gpt_run))
  assert final == {k: v for k, v in evals[0].items() if k not in ("step", "split", "time")}
  assert snapshot(gpt_run) == before


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tokenizers_dir, tmp_path,
                                                                   capsys):
  """The newest checkpoint unreadable: the run says so in one line, resumes from the one
  before (the unreadable one set aside, not deleted) and ends with the uninterrupted losses."""
  straight = tmp_path / "straight"
  args = lambda w: train_args(w, tokenizers_dir["gpt"], 6, GPT, "--config.checkpoint.keep=10")
  args_every = lambda w: [a for a in args(w) if a != "--config.checkpoint.every=1000"] + [
      "--config.checkpoint.every=1"]
  assert cli.main(["plm-jax", *args_every(straight)]) == 0
  workdir = cut_back(straight, tmp_path / "run", 4)
  for f in (workdir / "checkpoints" / "4" / "params" / "d").iterdir():
    f.unlink()
  capsys.readouterr()
  assert cli.main(["plm-jax", *args_every(workdir)]) == 0
  out = capsys.readouterr().out
  line = next(l for l in out.splitlines() if "is corrupt or incomplete" in l)
  assert f"checkpoint {workdir}/checkpoints/4 is corrupt or incomplete (" in line
  assert line.endswith("resuming from the previous checkpoint, step 3, instead (the unreadable "
                       "one is kept as corrupt-4)") and "::" not in line, line
  assert (workdir / "checkpoints" / "corrupt-4" / "params").is_dir()
  got, want = records(workdir), records(straight)
  assert [r["step"] for r in got] == list(range(1, 7))
  np.testing.assert_array_equal([r["loss"] for r in got], [r["loss"] for r in want])


@pytest.mark.parametrize("content", ["{}", "{not json", '{"model": {"family": "gpt"}}'])
def test_an_unreadable_config_json_is_named(gpt_run, tmp_path, capsys, content):
  import shutil
  workdir = tmp_path / "copy"
  shutil.copytree(gpt_run, workdir)
  (workdir / "config.json").write_text(content)
  before = snapshot(workdir)
  for command in ("train", "evaluate"):
    err = one_line(capsys, command, "--workdir", str(workdir))
    assert "config.json" in err and ("is not a plm-jax config" in err or "unreadable" in err)
  assert snapshot(workdir) == before


def test_evaluate_of_a_corrupt_checkpoint_is_one_line(gpt_run, tmp_path, capfd):
  import shutil
  workdir = tmp_path / "corrupt"
  shutil.copytree(gpt_run, workdir)
  for f in (workdir / "checkpoints" / "2" / "params" / "d").iterdir():
    f.unlink()
  done = subprocess.run([sys.executable, "-m", "plm_jax.cli", "evaluate", "--workdir",
                         str(workdir)], cwd=ROOT, capture_output=True, text=True, timeout=200)
  assert done.returncode == 2
  lines = [l for l in done.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and "is corrupt or incomplete" in lines[0], done.stderr[-3000:]


def test_a_read_only_workdir_is_one_line(tmp_path, tokenizers_dir, capsys):
  with tmpfs(tmp_path / "ro", "1m") as mount:
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    err = one_line(capsys, *train_args(mount / "run", tokenizers_dir["gpt"], 2, GPT))
    assert "is not writable" in err or "Read-only file system" in err
  with tmpfs(tmp_path / "ro2", "20m") as mount:
    assert cli.main(["plm-jax", *train_args(mount / "run", tokenizers_dir["gpt"], 2, GPT)]) == 0
    capsys.readouterr()
    before = snapshot(mount / "run")
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    err = one_line(capsys, *train_args(mount / "run", tokenizers_dir["gpt"], 4, GPT))
    assert "is not writable" in err or "Read-only file system" in err
    assert snapshot(mount / "run") == before


# --- reproducibility ------------------------------------------------------------------------------

REPRODUCE = """
import hashlib, sys
sys.path.insert(0, sys.argv[1])
from configs import bert
from plm_jax.data import pipeline
print(pipeline.corpus_tokenizer(bert.get_config("tiny")).tokenizer.to_str())
"""


def test_same_seed_and_data_give_the_same_tokenizer(tmp_path, monkeypatch):
  """HF tokenizers' training differs from process to process (hash-map order); two processes
  training on the same corpus get one vocabulary (the same ids, so the same losses: the rest
  of a run is deterministic, as the resume tests show), also when the cache starts empty."""
  monkeypatch.setenv("PLM_JAX_CACHE", str(tmp_path / "cache"))
  vocabularies = []
  for _ in range(2):
    done = subprocess.run([sys.executable, "-c", REPRODUCE, ROOT], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    vocabularies.append(json.loads(done.stdout)["model"]["vocab"])
  assert vocabularies[0] == vocabularies[1]
