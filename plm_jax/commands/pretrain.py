"""`plm-jax train`: pretrain (or resume) a model on its corpus."""

import dataclasses
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
  final = _finished(config, workdir, resume_step)
  if final is not None:
    return final
  phased = Phased.build(config, parallel.mesh_for(config, devices), found.tokenizer)
  trainer = phased.trainers[0]
  keys = trainer.objective.eval_keys

  with Run(config, workdir, trainer, resume_step) as run:
    state, meta = run.start(lambda: trainer.init_state(config.train.seed))
    run.accept(phased.tokenizer)
    run.describe(f"{config.model.family} {config.model.size}")
    train_step = phased.compiled(run.compile())

    def evaluate(state, step) -> dict:
      phase = phases.phase_after(config, step)
      held_out = phased.eval_batches[phase - 1]
      metrics = evaluate_params(phased.trainers[phase - 1], state["params"], held_out,
                                held_out.eval_steps(config.train.eval_steps))
      run.writer.write(step, "eval", metrics)
      console(f"eval @ step {step}: {format_metrics(metrics, keys)}")
      return metrics

    state = run.loop(train_step, state, meta, run.batches(phased.train, meta), evaluate)
    final = evaluate(state, int(state["step"]))
  run.summary(int(state["step"]))
  return final


def _finished(config, workdir: str, resume_step) -> dict | None:
  """The final evaluation of a finished run (its checkpoint at train.steps or beyond, its final
  evaluation recorded): run again, it would only record that evaluation a second time."""
  if resume_step is None or resume_step < config.train.steps:
    return None
  final = recorded(workdir, resume_step, "eval")
  if not distributed.agree(int(final is not None)):
    return None
  console(f"nothing to do: {workdir} is finished (checkpoint at step {resume_step} >= "
          f"train.steps={config.train.steps}, its final evaluation in "
          f"{os.path.join(workdir, METRICS_FILE)}); nothing was changed; raise "
          "--config.train.steps to train further")
  return final


@dataclasses.dataclass
class Phased:
  """One phase, or BERT's two (plm_jax/data/phases.py): each its config, examples, batches and
  train step; the state, the schedule and the run are one."""
  config: object
  one_phase: list
  tokenizer: object
  trainers: list
  train: object                 # the training batches, switching at the switch step
  eval_batches: list

  @classmethod
  def build(cls, config, mesh, tokenizer=None) -> "Phased":
    count = 2 if phases.enabled(config) else 1
    one_phase = [phases.phase_config(config, p) for p in range(1, count + 1)]
    data = [load_data(one_phase[0], tokenizer)]
    tokenizer = data[0].tokenizer
    data += [load_data(c, tokenizer) for c in one_phase[1:]]
    trainers = [Trainer.create(c, mesh, padded_vocab(config, tokenizer.vocab_size),
                               tokenizer.pad_id) for c in one_phase]
    train = [loader.Batches(c, d, loader.TRAIN, mesh=mesh) for c, d in zip(one_phase, data)]
    evals = [loader.Batches(c, d, loader.EVAL, mesh=mesh) for c, d in zip(one_phase, data)]
    served = train[0] if count == 1 else phases.PhasedBatches(*train,
                                                              phases.switch_step(config))
    return cls(config, one_phase, tokenizer, trainers, served, evals)

  def compiled(self, first_step):
    """The train step of every phase, from the first phase's (compiled by the run)."""
    if len(self.one_phase) == 1:
      return first_step
    config, switch = self.config, phases.switch_step(self.config)
    t1, t2 = (c.data.max_seq_length for c in self.one_phase)
    console(f"phases: steps 1-{switch} at {t1} tokens, {switch + 1}-{config.train.steps} at "
            f"{t2} (data.phase2_from={config.data.phase2_from:g}); one learning-rate "
            "schedule over all")
    with timed(f"compiled the phase-2 train step ({t2} tokens)"):
      second = self.trainers[1].compile_train_step()
    return phases.by_length({t1: first_step, t2: second})
