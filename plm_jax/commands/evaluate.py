"""`plm-jax evaluate`: a restored checkpoint's eval metrics on the devices present."""

import json
import os

import jax

from plm_jax import workdir as workdirs
from plm_jax.data import loader, phases
from plm_jax.errors import ConfigError
from plm_jax.finetune import kinds
from plm_jax.inference import load_params, restore_config
from plm_jax.run.metrics_writer import console, format_metrics
from plm_jax.run.data import load_data
from plm_jax.trainer import evaluate_params


def evaluate(workdir: str, step: int | None = None, eval_steps: int | None = None,
             devices=None, config=None, best: bool = False, split: str = "validation") -> dict:
  """Restores `step` (default: the latest) of `workdir` and returns its eval metrics.

  The mesh is FSDP over whatever devices are present (or `config`'s, a workdir config with
  overrides), whatever mesh the run was trained on; Orbax reshards the parameters on load. The
  optimizer state is never read. Fine-tuned runs report their classification metrics on
  `split`, of the latest, `step` or (`best`) the best checkpoint.
  """
  kind = kinds.of(workdirs.load_config(workdir))
  if kind is None and (best or split != "validation"):
    raise ConfigError("--best and --split are for fine-tuned runs (plm-jax finetune); a "
                      "pretraining run is evaluated on its held-out documents")
  devices = jax.devices() if devices is None else list(devices)
  config = restore_config(workdir, devices, config)     # the one checks pass of the command
  if kind is not None:
    return kind.evaluate(workdir, step, best=best, split=split, devices=devices, config=config)
  loaded = load_params(workdir, step, devices, config=config)
  config, trainer = loaded.config, loaded.trainer
  if eval_steps is not None:
    with config.unlocked():
      config.train.eval_steps = eval_steps
  # a two-phase run's checkpoint at the length of the phase that trained it (as the run's own
  # evaluations: a finished run at its last phase's)
  config = phases.phase_config(config, phases.phase_after(config, loaded.step))
  held_out = load_data(config, loaded.tokenizer, eval_only=True)
  eval_data = loader.Batches(config, held_out, loader.EVAL, mesh=trainer.mesh)
  steps = eval_data.eval_steps(config.train.eval_steps)
  metrics = evaluate_params(trainer, loaded.params, eval_data, steps)
  console(f"eval of {workdir} @ step {loaded.step} ({steps} batches of "
          f"{config.train.batch_size}): {format_metrics(metrics, trainer.objective.eval_keys)}")
  result = {"step": loaded.step, "workdir": os.path.abspath(workdir), "eval_batches": steps,
            **metrics}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, f"eval_step_{loaded.step}.json"), "w",
              encoding="utf-8") as f:
      json.dump(result, f, indent=2)
  return result
