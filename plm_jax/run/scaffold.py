"""How a training run lives and dies in its workdir, shared by pretraining and fine-tuning.

    found = workdir.inspect(path)                     # reads only
    ... validate, refuse another model, load data, build the trainer ...
    with Run(config, path, trainer, found.step) as run:   # takes the workdir's lock
      state, meta = run.start(lambda: trainer.init_state(seed))   # restore, or init
      run.accept(tokenizer)                           # only now is the workdir written
      state = run.loop(train_step, state, meta, batches, on_eval)

The two commands differ only in what they build (data, model, evaluation); the scaffold owns the
rest: the workdir's lock, checkpoint managers, the metric writer, the resume position, the step
loop (logging, checkpoints by steps and by time with the loader's position, periodic
evaluation) and how a run ends short of its last step, losing at most the step in flight:

  SIGTERM / SIGINT / a preemption notice   checkpoint at the step reached, exit 75 (resume)
  a non-finite loss or gradient norm       checkpoint of the last finite state, exit 3
  a loss spike (train.spike_factor)        later checkpoints set aside, the one before kept, exit 3
  a checkpoint that cannot be written      the last complete one kept, exit 5
  no progress for train.step_timeout_s     every thread's stack dumped, exit 4 (watchdog.py)
"""

import collections
import contextlib
import errno
import os
import time
from typing import Callable

import jax
import numpy as np

from plm_jax import workdir as workdirs
from plm_jax.hardware import accelerator, distributed
from plm_jax.data import loader
from plm_jax.errors import CheckpointError
from plm_jax.run import checkpoint
from plm_jax.run.lock import WorkdirLock
from plm_jax.run.metrics_writer import (MetricsWriter, console, format_duration, format_metrics, ProgressBar, timed, wants_bar)
from plm_jax.run.stopping import Diverged, Preempted, SaveFailed, StopRequests
from plm_jax.run.watchdog import Watchdog
from plm_jax.trainer import Trainer, max_nonfinite_run

# Per-step values of the train step that are not means to log.
FLAGS = ("tokens", "nonfinite", "halted", "spike", "loss_level")
SCHEDULE = ("learning_rate",)        # a function of the step, finite whatever the batch
# Steps the host may dispatch ahead of the device. Enough to keep the device busy; few enough
# that a stop request (a preemption's grace period is often 30 s) and the watchdog see the
# device's progress, not only the host's.
MAX_IN_FLIGHT = 2
SET_ASIDE = "spiked-"     # checkpoints saved after an update whose loss spiked, kept aside
CORRUPT = "corrupt-"      # checkpoints that cannot be read, kept aside


class Run:
  """A run of `trainer` in `path`, resuming from `resume_step` (None: a fresh start)."""

  clock = staticmethod(time.monotonic)     # checkpoint.every_seconds is measured with it

  def __init__(self, config, path: str, trainer: Trainer, resume_step: int | None):
    self.config, self.path, self.trainer = config, path, trainer
    self.resume_step = resume_step
    self.lock = WorkdirLock(path, enabled=jax.process_index() == 0)
    try:
      note = self.lock.acquire()
    except OSError as e:
      raise _not_writable(path, e) from None
    if note:
      console(f"{path}: {note}")
    self._managers = []
    self.writer: MetricsWriter | None = None
    self._batches = None
    self._train = None        # the train batches (loader.Batches or phases.PhasedBatches)
    self.last_saved: int | None = resume_step
    try:
      self.manager = self._open(checkpoint.CHECKPOINT_DIR, kept_checkpoints(config),
                                config.checkpoint.async_save)
    except BaseException:
      self.lock.release()
      raise

  # --- lifetime ----------------------------------------------------------------------------------
  def __enter__(self) -> "Run":
    return self

  def __exit__(self, kind, error, traceback) -> None:
    self.close(quiet=error is not None)

  def close(self, quiet: bool = False) -> None:
    """Stops the loader, waits for pending saves and closes managers, writer and lock. When the
    run is already failing (`quiet`), a second error here is not raised over the first."""
    if self._batches is not None:
      self._batches.close()
    try:
      for manager in self._managers:
        try:
          manager.wait_until_finished()
        finally:
          manager.close()
    except Exception:  # noqa: BLE001 - a save failed: reported unless an error is on its way
      if not quiet:
        raise
    finally:
      if self.writer is not None:
        self.writer.close()
      self.lock.release()

  def _open(self, subdir: str, keep: int, async_save: bool):
    try:
      manager = checkpoint.make_manager(self.path, keep=keep, async_save=async_save,
                                        subdir=subdir)
    except OSError as e:
      raise _not_writable(self.path, e) from None
    self._managers.append(manager)
    return manager

  def extra_manager(self, subdir: str, *, keep: int, async_save: bool = False):
    """Another set of checkpoints in the workdir (fine-tuning's best/), closed with the run."""
    return self._open(subdir, keep, async_save)

  # --- start ---------------------------------------------------------------------------------------
  def start(self, init: Callable[[], dict]) -> tuple[dict, dict]:
    """(state, checkpoint meta): the latest checkpoint restored, or `init()` for a fresh run."""
    if self.resume_step is None:
      with timed(f"initialised {self.trainer.num_params / 1e6:.2f}M parameters and the "
                 "optimizer state"):
        return init(), {}
    t0 = time.time()
    try:
      try:
        state, meta = self.trainer.restore_state(self.manager, self.resume_step)
      except checkpoint.CorruptCheckpoint as e:
        state, meta = self._previous_checkpoint(e)
      if "loss_level" in meta:
        state["loss_level"] = jax.device_put(np.asarray(meta["loss_level"], np.float32),
                                             self.trainer.state_shardings["loss_level"])
    except checkpoint.OptimizerMismatch as e:
      saved = workdirs.load_config(self.path).optim
      changed = [f"optim.{k}: saved {saved[k]!r}, now {v!r}"
                 for k, v in self.config.optim.items() if k in saved and saved[k] != v]
      raise CheckpointError(
          f"{e}; the checkpoint is intact: the config changed "
          f"{'; '.join(changed) if changed else 'the optimizer'} - resume with the saved "
          "values (or fine-tune from it with plm-jax finetune / a fresh --workdir)") from None
    console(f"resumed from step {self.resume_step} in {checkpoint.checkpoint_dir(self.path)} "
            f"in {time.time() - t0:.1f}s")
    return state, meta

  def _previous_checkpoint(self, error: "checkpoint.CorruptCheckpoint") -> tuple[dict, dict]:
    """Falls back from a checkpoint that cannot be read to the newest one before it that can,
    saying so; the unreadable ones are set aside (checkpoints/corrupt-<step>), not deleted."""
    bad = [error.step]
    for step in sorted(self.manager.all_steps(), reverse=True):
      if step >= error.step:
        continue
      try:
        restored = self.trainer.restore_state(self.manager, step)
      except checkpoint.CorruptCheckpoint:
        bad.append(step)
        continue
      self._set_aside(bad, CORRUPT)
      console(f"{error}: resuming from the previous checkpoint, step {step}, instead (the "
              f"unreadable one is kept as {CORRUPT}{error.step})")
      self.resume_step = self.last_saved = step
      return restored
    raise error

  def accept(self, tokenizer) -> None:
    """The run is accepted: its config and tokenizer are written, metrics may follow. Nothing
    is written to the workdir before this (a refused run leaves it as it was)."""
    workdirs.save_config(self.path, self.config)
    if jax.process_index() == 0:
      tokenizer.save(self.path)
    self.writer = MetricsWriter(self.path, resume_step=self.resume_step or 0,
                                config=self.config)

  def describe(self, what: str) -> None:
    mesh = self.trainer.mesh
    console(f"model: {what}, {self.trainer.num_params / 1e6:.2f}M parameters; mesh "
            f"{dict(mesh.shape)} over {mesh.devices.size} {jax.devices()[0].platform} device(s)")
    console(f"settings: {accelerator.describe(self.config)}")
    o, steps = self.config.optim, self.config.train.steps
    if o.warmup_steps >= steps > 0:
      console(f"warning: optim.warmup_steps={o.warmup_steps} >= train.steps={steps}: the "
              f"warm-up is cut to the run, whose learning rate climbs to its peak "
              f"({o.learning_rate:g}) only at the last step and never decays; e.g. "
              f"--config.optim.warmup_steps={max(1, steps // 10)}")

  def compile(self):
    with timed("compiled the train step"):
      step = self.trainer.compile_train_step()
    console(f"attention: {self.trainer.attention_kernels}")
    return step

  def batches(self, train, meta: dict):
    """The train batches from the restored loader position (or the state's step), prefetched;
    stopped when the run closes."""
    state = meta.get("data_iterator") or {"next_index": self.resume_step or 0}
    self._train, self._batches = train, train.iterator(state)
    if train.offset(state["next_index"]):
      console(f"data: resumed at example {train.position(state['next_index']):,} of the "
              f"training stream, saved with another batch size (now {train.global_batch} per "
              "step): the examples not yet seen come next, none repeated or skipped")
    return self._batches

  # --- saving --------------------------------------------------------------------------------------
  def save(self, step: int, state: dict, meta: dict, *, wait: bool = False) -> None:
    """Starts a save (waits for it with `wait`); a save that fails, now or in the background,
    stops the run with the last complete checkpoint named."""
    try:
      # Orbax saves one step at a time: the previous save must end before this one starts;
      # waiting here attributes its failure to its own step.
      self.manager.wait_until_finished()
      self.manager.check_for_errors()
    except Exception as e:  # noqa: BLE001
      self._save_failed(self.last_saved, e)
    try:
      checkpoint.save(self.manager, step, state, meta)
      if wait:
        self.manager.wait_until_finished()
      self.manager.check_for_errors()
    except Exception as e:  # noqa: BLE001 - Orbax / TensorStore / the OS raise many types
      self._save_failed(step, e)
    self.last_saved = step

  def check_saves(self) -> None:
    """Raises SaveFailed if a background save failed since the last check (no waiting)."""
    try:
      self.manager.check_for_errors()
    except Exception as e:  # noqa: BLE001
      self._save_failed(self.last_saved, e)

  def _save_failed(self, step, error: Exception, what: str = "the checkpoint of") -> None:
    complete = max(checkpoint.complete_steps(self.path), default=None)
    detail = _reason(error)
    where = (f"the last complete checkpoint is step {complete} in "
             f"{checkpoint.checkpoint_dir(self.path)}" if complete is not None else
             "no complete checkpoint exists yet")
    raise SaveFailed(f"{what} step {step} could not be written ({detail}); {where}; free "
                     "space or fix the filesystem, then run the same command to resume"
                     ) from None

  def summary(self, step: int) -> None:
    """Where the run's results are (called once it is closed: its files are complete)."""
    w = self.path
    console(f"done at step {step}: checkpoints {checkpoint.checkpoint_dir(w)}, metrics "
            f"{os.path.join(w, 'metrics.jsonl')}, curves {os.path.join(w, 'plots', 'curves.png')}"
            f"; TensorBoard: tensorboard --logdir {os.path.join(w, 'tensorboard')}")

  # --- the loop ----------------------------------------------------------------------------------
  def loop(self, train_step, state: dict, meta: dict, batches,
           on_eval: Callable[[dict, int], None]) -> dict:
    """Steps from the state's step to train.steps: logs at step 1 and every train.log_every
    steps (under a progress bar in a terminal), checkpoints every checkpoint.every steps (and checkpoint.every_seconds; with the loader's
    position: a resumed run continues with the very batch an uninterrupted run would have seen
    next), and calls `on_eval(state, step)` every train.eval_every steps (not at the last: the
    caller evaluates). Stops short as the module's doc says."""
    config, trainer = self.config, self.trainer
    keys = trainer.objective.train_keys + ("grad_norm",) + (
        ("skipped_steps",) if config.train.nonfinite == "skip" else ())
    total, start = config.train.steps, int(state["step"])
    log_every, ckpt_every = max(1, config.train.log_every), config.checkpoint.every
    every_s, eval_every = config.checkpoint.every_seconds, config.train.eval_every
    tokens_seen = int(meta.get("tokens_seen", 0))
    pending, waited, t_last, s_last, t_saved = [], 0.0, time.time(), start, self.clock()
    in_flight: collections.deque = collections.deque()
    stops = StopRequests().install()
    watchdog = Watchdog(config.train.step_timeout_s,
                        describe=lambda: f"after step {done} of {self.path}").start()
    done = start
    bar = ProgressBar(wants_bar(config.train.progress_bar), total, start)
    try:
      for step in range(start, total):
        t_wait = time.perf_counter()
        local = next(batches)        # prepared by background threads while the last step ran
        waited += time.perf_counter() - t_wait
        state, metrics = train_step(state, loader.to_global(local, trainer.batch_shardings))
        pending.append(metrics)
        in_flight.append(metrics["tokens"])
        if len(in_flight) > MAX_IN_FLIGHT:
          in_flight.popleft().block_until_ready()
        done = step + 1
        watchdog.beat()
        logged = None
        # Step 1 too: a new run shows its first loss without waiting log_every steps.
        if done % log_every == 0 or done == total or done == 1:
          # The only place the host waits for the device: fetching the interval's metrics.
          fetched = jax.device_get(pending)
          self._check_finite(fetched, done - len(fetched) + 1, state, tokens_seen)
          tokens_seen, logged = self._log(fetched, done, tokens_seen, time.time() - t_last,
                                          waited, keys)
          watchdog.beat(measured=s_last != start)   # the first interval includes warm-up
          pending, waited, t_last, s_last = [], 0.0, time.time(), done
          self.check_saves()
        bar.advance(1, logged)
        stop = stops.reached(done)
        by_time = every_s > 0 and self._time_to_save(t_saved, every_s, done, log_every)
        if done % ckpt_every == 0 or done == total or by_time or stop:
          # Steps since the last log: their flags decide whether this state may be saved, and
          # their tokens are counted for the checkpoint.
          fetched = jax.device_get(pending)
          self._check_finite(fetched, done - len(fetched) + 1, state, tokens_seen)
          unlogged = int(np.sum([m["tokens"] for m in fetched])) if fetched else 0
          # The last step's and a stopping run's saves are waited for: nothing after them may
          # cost them (a signal during the final evaluation, the process ending).
          self.save(done, state, self.meta(done, state, tokens_seen + unlogged) |
                    {"data_iterator": batches.get_state()}, wait=stop or done == total)
          t_saved = self.clock()
          watchdog.beat()
        if stop:
          raise Preempted(f"preempted at step {done} ({stops.name()}): checkpoint saved in "
                          f"{checkpoint.checkpoint_dir(self.path)}; run the same command to "
                          "resume")
        if eval_every and done % eval_every == 0 and done != total:
          with _paused(watchdog):
            on_eval(state, done)
    finally:
      bar.close()
      watchdog.stop()
      stops.uninstall()
    if start >= total:
      console(f"nothing to do: the workdir's checkpoint is at step {start} >= "
              f"train.steps={total}")
    return state

  def _log(self, fetched: list, done: int, tokens_seen: int, seconds: float, waited: float,
           keys: tuple[str, ...]) -> tuple[int, str]:
    """One progress line (and metrics record) for the interval ending at `done`; returns the
    tokens seen so far and the progress bar's summary of the interval."""
    tokens = float(np.sum([m["tokens"] for m in fetched]))
    mean = _means(fetched)
    mean["tokens_per_s"] = tokens / max(seconds, 1e-9)
    mean["step_time_s"] = seconds / len(fetched)
    mean["data_wait_s"] = waited / len(fetched)
    mean["tokens_seen"] = tokens_seen + int(tokens)
    self._write("train", done, mean)
    total = self.config.train.steps
    console(f"step {done}/{total} | {format_metrics(mean, keys)} | "
            f"{mean['tokens_per_s']:,.0f} tok/s | data wait {mean['data_wait_s'] * 1e3:.1f} "
            f"ms/step | ETA {format_duration((total - done) * mean['step_time_s'])}")
    return tokens_seen + int(tokens), format_metrics(mean, ("loss",))

  def _time_to_save(self, t_saved: float, every_s: float, done: int, log_every: int) -> bool:
    """checkpoint.every_seconds: decided every step by one process; by process 0 at each log
    step (and told to the others) when there are several, so all save the same step."""
    if jax.process_count() == 1:
      return self.clock() - t_saved >= every_s
    if done % log_every:
      return False
    return bool(distributed.agree(int(self.clock() - t_saved >= every_s)))

  def _write(self, split: str, step: int, metrics: dict) -> None:
    """metrics.jsonl and TensorBoard; a full disk there stops the run like a failed save."""
    try:
      self.writer.write(step, split, metrics)
    except OSError as e:
      self._save_failed(step, e, what="the metrics of")

  def meta(self, step: int, state: dict, tokens_seen: int) -> dict:
    """A checkpoint's meta: tokens seen, the loader's position, the running loss level (a
    resumed run measures spikes against it at once)."""
    position = {"next_index": step} if self._train is None else self._train.state_at(step)
    level = [float(x) for x in jax.device_get(state["loss_level"])]
    return {"tokens_seen": tokens_seen, "data_iterator": position, "loss_level": level}

  def _set_aside_after(self, step: int) -> int:
    """Renames the checkpoints after `step` to checkpoints/spiked-<step> (nothing is deleted;
    a resume no longer takes them); returns the newest step left (0 if none)."""
    # A save still in flight (async) is of a step after `step` too: it must be complete before
    # the listing, or it would stay behind as the newest checkpoint, the one a resume takes.
    self.manager.wait_until_finished()
    self._set_aside([s for s in checkpoint.complete_steps(self.path) if s > step], SET_ASIDE)
    return max([s for s in checkpoint.complete_steps(self.path) if s <= step], default=0)

  def _set_aside(self, steps: list[int], prefix: str) -> None:
    """Renames checkpoints/<step> to checkpoints/<prefix><step>: out of the resume's way."""
    self.manager.wait_until_finished()
    where = checkpoint.checkpoint_dir(self.path)
    if jax.process_index() == 0:
      for step in steps:
        os.replace(os.path.join(where, str(step)), os.path.join(where, f"{prefix}{step}"))
    self.manager.reload()

  def _check_finite(self, fetched: list, first_step: int, state: dict, tokens_seen: int) -> None:
    """Stops the run when the compiled step halted on non-finite values (trainer.py): saves
    the last finite state (unless already saved) and names the step that diverged."""
    halted = [i for i, m in enumerate(fetched) if m["halted"]]
    if not halted:
      return
    bad = first_step + halted[0]          # the step whose update was refused
    good = int(state["step"])             # the state stood still at the last finite step
    m = fetched[halted[0]]
    if m["spike"]:
      # The loss of step `bad` is that of the state the update before it made: that state,
      # and any checkpoint of it, is suspect; the newest checkpoint before it is the good one.
      good = self._set_aside_after(good - 1)
    elif self.last_saved != good and good > 0:
      self.save(good, state, self.meta(good, state, tokens_seen) | {"diverged_at": bad},
                wait=True)
    what = f"loss {m['loss']}, gradient norm {m['grad_norm']}"
    if m["spike"]:
      what += (f": a spike over {self.config.train.spike_factor:g} x the running loss level "
               f"{m['loss_level']:.4g}, train.spike_factor")
    trouble = "a loss spike" if m["spike"] else "a non-finite loss or gradient"
    if self.config.train.nonfinite == "skip":
      why = (f"{max_nonfinite_run(self.config) + 1} steps in a row (up to step {bad}) had "
             f"{trouble} ({what}; train.max_consecutive_skips="
             f"{self.config.train.max_consecutive_skips})")
    else:
      why = f"step {bad} had {trouble} ({what}; train.nonfinite=stop)"
    if m["spike"]:
      saved = (f"checkpoint of step {good}, the last before the update that spiked, kept in "
               f"{checkpoint.checkpoint_dir(self.path)} (later ones set aside as "
               f"{SET_ASIDE}<step>)" if good else "no checkpoint from before the spike")
    else:
      saved = (f"checkpoint of step {good}, the last finite state, in "
               f"{checkpoint.checkpoint_dir(self.path)}" if good > 0 else "no checkpoint (it "
               "diverged at the first step)")
    raise Diverged(f"diverged: {why}; its update was not applied; {saved}; lower "
                   "optim.learning_rate (or raise optim.warmup_steps) and run the same command "
                   "to resume")


def kept_checkpoints(config) -> int:
  """How many checkpoints rotation keeps: checkpoint.keep, but 2 at least while spikes are
  watched (train.spike_factor). A spike's loss is that of the state the update before it made,
  so the newest checkpoint may be of that suspect state; the one before it must still be there
  to resume from, and with keep=1 rotation would already have deleted it."""
  keep = config.checkpoint.keep
  return max(keep, 2) if config.train.spike_factor else keep


def _not_writable(path: str, error: OSError) -> CheckpointError:
  return CheckpointError(f"--workdir {path!r} is not writable ({error.strerror}); give a "
                         "directory this user may write to")


def _reason(error: Exception) -> str:
  """The operating system's words when a failure comes from it (Orbax and TensorStore wrap
  them in long messages), else the error's own, shortened."""
  text = " ".join(str(error).split())
  for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO, errno.ENOENT):
    if os.strerror(code) in text:
      return os.strerror(code)
  return f"{type(error).__name__}: {text[:200]}"


def _means(fetched: list) -> dict:
  """Means of the interval's metrics: of the model's (loss, accuracy, gradient norm) over the
  steps whose update was applied, of the schedule's over all; with the count of skipped
  (non-finite) steps."""
  applied = [m for m in fetched if not m["nonfinite"]]
  mean = {}
  for k in fetched[-1]:
    steps = fetched if k in SCHEDULE else applied
    if k not in FLAGS and steps:
      mean[k] = float(np.mean([m[k] for m in steps]))
  mean["skipped_steps"] = float(sum(m["nonfinite"] > 0 for m in fetched))
  return mean


@contextlib.contextmanager
def _paused(watchdog: Watchdog):
  """Evaluation is not training progress: the watchdog waits until it is done."""
  watchdog.beat()
  with watchdog.paused():
    yield
  watchdog.beat()
