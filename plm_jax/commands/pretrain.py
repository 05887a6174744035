"""`plm-jax train`: pretrain (or resume) a model on its corpus."""

import os

import jax

from plm_jax import checks, parallel, workdir as workdirs
from plm_jax.hardware import distributed
from plm_jax.data import loader
from plm_jax.errors import ConfigError
from plm_jax.models.config import padded_vocab
from plm_jax.run.metrics_writer import METRICS_FILE, console, format_metrics, recorded
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
  data = load_data(config, found.tokenizer)
  tokenizer = data.tokenizer
  mesh = parallel.mesh_for(config, devices)
  trainer = Trainer.create(config, mesh, padded_vocab(config, tokenizer.vocab_size),
                           tokenizer.pad_id)
  train_batches = loader.Batches(config, data, loader.TRAIN, mesh=mesh)
  eval_batches = loader.Batches(config, data, loader.EVAL, mesh=mesh)
  eval_steps = eval_batches.eval_steps(config.train.eval_steps)
  keys = trainer.objective.eval_keys

  with Run(config, workdir, trainer, resume_step) as run:
    state, meta = run.start(lambda: trainer.init_state(config.train.seed))
    run.accept(tokenizer)
    run.describe(f"{config.model.family} {config.model.size}")
    train_step = run.compile()

    def evaluate(state, step) -> dict:
      metrics = evaluate_params(trainer, state["params"], eval_batches, eval_steps)
      run.writer.write(step, "eval", metrics)
      console(f"eval @ step {step}: {format_metrics(metrics, keys)}")
      return metrics

    state = run.loop(train_step, state, meta, run.batches(train_batches, meta), evaluate)
    final = evaluate(state, int(state["step"]))
  run.summary(int(state["step"]))
  return final
