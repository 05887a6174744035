"""`plm-jax train`: pretrain (or resume) a model on its corpus."""

import os

import jax

from plm_jax import checks, parallel, workdir as workdirs
from plm_jax.hardware import distributed
from plm_jax.data import loader, phases
from plm_jax.errors import ConfigError
from plm_jax.models.config import padded_vocab
from plm_jax.run.metrics_writer import METRICS_FILE, console, format_metrics, recorded, timed
from plm_jax.run.scaffold import Run
from plm_jax.run.data import load_data, record_prepared_fields
from plm_jax.trainer import Trainer, evaluate_params


def train(config, workdir: str, devices=None) -> dict:
  """Pretrains (or resumes) the model of `config` in `workdir`; returns the final eval metrics.

  `devices` restricts the mesh to some of the devices (tests compare meshes in one process).
  """
  devices = jax.devices() if devices is None else list(devices)
  checks.validate(config, len(devices))
  record_prepared_fields(config)          # before the workdir's config is compared with it
  found = workdirs.inspect(workdir)
  workdirs.check_same_model(workdir, found, config)
  if config.train.steps == 0 and found.step is None:
    raise ConfigError("train.steps=0 leaves nothing to train in a fresh --workdir; give "
                      "--config.train.steps=N")
  # Every process resumes from the step process 0 found (a shared filesystem may lag).
  resume_step = distributed.agree(found.step)
  if resume_step is not None and resume_step >= config.train.steps:
    # A finished run (its final evaluation recorded) is left as it is: run again, it would
    # only record that evaluation a second time.
    final = recorded(workdir, resume_step, "eval")
    if distributed.agree(int(final is not None)):
      console(f"nothing to do: {workdir} is finished (checkpoint at step {resume_step} >= "
              f"train.steps={config.train.steps}, its final evaluation in "
              f"{os.path.join(workdir, METRICS_FILE)}); nothing was changed; raise "
              "--config.train.steps to train further")
      return final
  mesh = parallel.mesh_for(config, devices)
  # One phase, or BERT's two (plm_jax/data/phases.py): each its examples, batches and train
  # step; the state, the schedule and the run are one.
  count = 2 if phases.enabled(config) else 1
  one_phase = [phases.phase_config(config, p) for p in range(1, count + 1)]
  data = [load_data(one_phase[0], found.tokenizer)]
  tokenizer = data[0].tokenizer
  data += [load_data(c, tokenizer) for c in one_phase[1:]]
  trainers = [Trainer.create(c, mesh, padded_vocab(config, tokenizer.vocab_size),
                             tokenizer.pad_id) for c in one_phase]
  train_batches = [loader.Batches(c, d, loader.TRAIN, mesh=mesh) for c, d in zip(one_phase, data)]
  eval_batches = [loader.Batches(c, d, loader.EVAL, mesh=mesh) for c, d in zip(one_phase, data)]
  trainer = trainers[0]
  keys = trainer.objective.eval_keys
  switch = phases.switch_step(config)
  train = train_batches[0] if count == 1 else phases.PhasedBatches(*train_batches, switch)

  with Run(config, workdir, trainer, resume_step) as run:
    state, meta = run.start(lambda: trainer.init_state(config.train.seed))
    run.accept(tokenizer)
    run.describe(f"{config.model.family} {config.model.size}")
    train_step = run.compile()
    if count == 2:
      t1, t2 = (c.data.max_seq_length for c in one_phase)
      console(f"phases: steps 1-{switch} at {t1} tokens, {switch + 1}-{config.train.steps} at "
              f"{t2} (data.phase2_from={config.data.phase2_from:g}); one learning-rate "
              "schedule over all")
      with timed(f"compiled the phase-2 train step ({t2} tokens)"):
        second = trainers[1].compile_train_step()
      train_step = phases.by_length({t1: train_step, t2: second})

    def evaluate(state, step) -> dict:
      phase = phases.phase_after(config, step)
      held_out = eval_batches[phase - 1]
      metrics = evaluate_params(trainers[phase - 1], state["params"], held_out,
                                held_out.eval_steps(config.train.eval_steps))
      run.writer.write(step, "eval", metrics)
      console(f"eval @ step {step}: {format_metrics(metrics, keys)}")
      return metrics

    state = run.loop(train_step, state, meta, run.batches(train, meta), evaluate)
    final = evaluate(state, int(state["step"]))
  run.summary(int(state["step"]))
  return final
