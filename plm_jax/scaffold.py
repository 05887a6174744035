"""How a training run lives and dies in its workdir, shared by pretraining and fine-tuning.

    found = workdir.inspect(path)                     # reads only
    ... validate, refuse another model, load data, build the trainer ...
    with Run(config, path, trainer, found.step) as run:
      state, meta = run.start(lambda: trainer.init_state(seed))   # restore, or init
      run.accept(tokenizer)                           # only now is the workdir written
      state = run.loop(train_step, state, meta, batches, on_eval)

The two commands differ only in what they build (data, model, evaluation); the run scaffold owns
the rest: checkpoint managers, the metric writer, the resume position, the model summary, the
step loop (logging, checkpoints with the loader's position, periodic evaluation) and a clean
close of all of it, whatever happens.
"""

import time
from typing import Callable

import jax
import numpy as np

from plm_jax import checkpoint, workdir as workdirs
from plm_jax.data import loader
from plm_jax.metrics_writer import MetricsWriter, console, format_duration, format_metrics
from plm_jax.trainer import Trainer


class Run:
  """A run of `trainer` in `path`, resuming from `resume_step` (None: a fresh start)."""

  def __init__(self, config, path: str, trainer: Trainer, resume_step: int | None):
    self.config, self.path, self.trainer = config, path, trainer
    self.resume_step = resume_step
    self.manager = checkpoint.make_manager(path, keep=config.checkpoint.keep,
                                           async_save=config.checkpoint.async_save)
    self.writer: MetricsWriter | None = None
    self._managers = [self.manager]
    self._batches = None

  # --- lifetime ----------------------------------------------------------------------------------
  def __enter__(self) -> "Run":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    """Stops the loader, waits for pending saves and closes managers and writer."""
    if self._batches is not None:
      self._batches.close()
    for manager in self._managers:
      manager.wait_until_finished()
      manager.close()
    if self.writer is not None:
      self.writer.close()

  def extra_manager(self, subdir: str, *, keep: int, async_save: bool = False):
    """Another set of checkpoints in the workdir (fine-tuning's best/), closed with the run."""
    manager = checkpoint.make_manager(self.path, keep=keep, async_save=async_save, subdir=subdir)
    self._managers.append(manager)
    return manager

  # --- start ---------------------------------------------------------------------------------------
  def start(self, init: Callable[[], dict]) -> tuple[dict, dict]:
    """(state, checkpoint meta): the latest checkpoint restored, or `init()` for a fresh run."""
    if self.resume_step is None:
      return init(), {}
    state, meta = self.trainer.restore_state(self.manager, self.resume_step)
    console(f"resumed from step {self.resume_step} in {checkpoint.checkpoint_dir(self.path)}")
    return state, meta

  def accept(self, tokenizer) -> None:
    """The run is accepted: its config and tokenizer are written, metrics may follow. Nothing
    is written to the workdir before this (a refused run leaves it as it was)."""
    workdirs.save_config(self.path, self.config)
    if jax.process_index() == 0:
      tokenizer.save(self.path)
    self.writer = MetricsWriter(self.path)

  def describe(self, what: str) -> None:
    mesh = self.trainer.mesh
    console(f"model: {what}, {self.trainer.num_params / 1e6:.2f}M parameters; mesh "
            f"{dict(mesh.shape)} over {mesh.devices.size} {jax.devices()[0].platform} device(s)")

  def compile(self):
    t0 = time.time()
    train_step = self.trainer.compile_train_step()
    console(f"compiled the train step in {time.time() - t0:.1f}s")
    return train_step

  def batches(self, train: loader.Batches, meta: dict):
    """The train batches from the restored loader position (or the state's step), prefetched;
    stopped when the run closes."""
    self._batches = train.iterator(meta.get("data_iterator") or
                                   {"next_index": self.resume_step or 0})
    return self._batches

  # --- the loop ----------------------------------------------------------------------------------
  def loop(self, train_step, state: dict, meta: dict, batches,
           on_eval: Callable[[dict, int], None]) -> dict:
    """Steps from the state's step to train.steps: logs every train.log_every steps,
    checkpoints every checkpoint.every (with the loader's position: a resumed run continues with
    the very batch an uninterrupted run would have seen next), and calls `on_eval(state, step)`
    every train.eval_every steps (not at the last: the caller evaluates)."""
    config, trainer, writer = self.config, self.trainer, self.writer
    keys = trainer.objective.train_keys
    total = config.train.steps
    start = int(state["step"])
    tokens_seen = int(meta.get("tokens_seen", 0))
    log_every, ckpt_every = max(1, config.train.log_every), config.checkpoint.every
    eval_every = config.train.eval_every
    pending, waited, t_last, s_last = [], 0.0, time.time(), start
    for step in range(start, total):
      t_wait = time.perf_counter()
      local = next(batches)        # prepared by background threads while the last step ran
      waited += time.perf_counter() - t_wait
      state, metrics = train_step(state, loader.to_global(local, trainer.batch_shardings))
      pending.append(metrics)
      done = step + 1
      if done % log_every == 0 or done == total:
        # The only place the host waits for the device: fetching the metrics of the interval.
        fetched = jax.device_get(pending)
        now = time.time()
        steps = max(done - s_last, 1)
        interval_tokens = float(np.sum([m["tokens"] for m in fetched]))
        tokens_seen += int(interval_tokens)
        mean = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[-1] if k != "tokens"}
        mean["tokens_per_s"] = interval_tokens / max(now - t_last, 1e-9)
        mean["step_time_s"] = (now - t_last) / steps
        mean["data_wait_s"] = waited / steps
        mean["tokens_seen"] = tokens_seen
        writer.write(done, "train", mean)
        eta = (total - done) * mean["step_time_s"]
        console(f"step {done}/{total} | {format_metrics(mean, keys)} | "
                f"{mean['tokens_per_s']:,.0f} tok/s | data wait "
                f"{mean['data_wait_s'] * 1e3:.1f} ms/step | ETA {format_duration(eta)}")
        pending, waited, t_last, s_last = [], 0.0, time.time(), done
      if done % ckpt_every == 0 or done == total:
        # Steps since the last log are not yet in tokens_seen: count them for the checkpoint.
        unlogged = int(np.sum(jax.device_get([m["tokens"] for m in pending]))) if pending else 0
        checkpoint.save(self.manager, done, state, {"tokens_seen": tokens_seen + unlogged,
                                                    "data_iterator": batches.get_state()})
      if eval_every and done % eval_every == 0 and done != total:
        on_eval(state, done)
    if start >= total:
      console(f"nothing to do: the workdir's checkpoint is at step {start} >= "
              f"train.steps={total}")
    return state
