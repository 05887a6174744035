"""Evaluation of a restored checkpoint on the devices present (parameters only)."""

import json
import os

import jax
from flax import nnx

from plm_jax import checkpoint
from plm_jax.data import loader
from plm_jax.errors import ConfigError
from plm_jax.inference import load_model
from plm_jax.metrics_writer import console, format_metrics
from plm_jax.train import EVAL_KEYS, evaluate_params, load_data


def evaluate(workdir: str, step: int | None = None, eval_steps: int | None = None,
             devices=None, config=None, best: bool = False, split: str = "validation") -> dict:
  """Restores `step` (default: the latest) of `workdir` and returns its eval metrics.

  The mesh is FSDP over whatever devices are present (or `config`'s, a workdir config with
  overrides), whatever mesh the run was trained on; Orbax reshards the parameters on load. The
  optimizer state is never read. Fine-tuned runs report their classification metrics on
  `split`, of the latest, `step` or (`best`) the best checkpoint.
  """
  saved = checkpoint.load_config(workdir)
  if saved.objective.name == "classify":
    from plm_jax.finetune.run import evaluate_classifier
    return evaluate_classifier(workdir, step, best=best, split=split, devices=devices,
                               config=config)
  if best or split != "validation":
    raise ConfigError("--best and --split are for fine-tuned runs (plm-jax finetune); a "
                      "pretraining run is evaluated on its held-out documents")
  restored = load_model(workdir, step, devices, config=config)
  config, trainer = restored.config, restored.trainer
  if eval_steps is not None:
    with config.unlocked():
      config.train.eval_steps = eval_steps
  eval_data = loader.Batches(config, load_data(config, restored.tokenizer), loader.EVAL,
                             mesh=trainer.mesh)
  steps = eval_data.eval_steps(config.train.eval_steps)
  params = nnx.to_pure_dict(nnx.state(restored.model, nnx.Param))
  metrics = evaluate_params(trainer, params, eval_data, steps)
  console(f"eval of {workdir} @ step {restored.step} ({steps} batches of "
          f"{config.train.batch_size}): {format_metrics(metrics, EVAL_KEYS)}")
  result = {"step": restored.step, "workdir": os.path.abspath(workdir), "eval_batches": steps,
            **metrics}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, f"eval_step_{restored.step}.json"), "w",
              encoding="utf-8") as f:
      json.dump(result, f, indent=2)
  return result
