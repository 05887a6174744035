"""Evaluation of a restored checkpoint on the devices present (parameters only)."""

import json
import os

import jax

from plm_jax import checkpoint, parallel
from plm_jax.data import loader
from plm_jax.data.tokenizer import TextTokenizer
from plm_jax.errors import CheckpointError
from plm_jax.metrics_writer import console, format_metrics
from plm_jax.train import EVAL_KEYS, Trainer, evaluate_params, load_data, padded_vocab


def evaluate(workdir: str, step: int | None = None, eval_steps: int | None = None) -> dict:
  """Restores `step` (default: the latest) of `workdir` and returns its eval metrics.

  The mesh is FSDP over whatever devices are present, whatever mesh the run was trained on;
  Orbax reshards the parameters on load. The optimizer state is never read.
  """
  config = checkpoint.load_config(workdir)
  with config.unlocked():
    config.mesh.update(data=1, fsdp=-1, tensor=1)
    if eval_steps is not None:
      config.train.eval_steps = eval_steps
  mesh = parallel.make_mesh(parallel.validate(config, jax.device_count()))
  available = checkpoint.latest_step(workdir)
  if available is None:
    raise CheckpointError(f"--workdir {workdir!r} holds no checkpoint yet")
  step = available if step is None else step
  tokenizer = TextTokenizer.load(workdir)
  data = load_data(config, tokenizer)
  eval_data = loader.Batches(config, data, loader.EVAL)
  trainer = Trainer.create(config, mesh, padded_vocab(config, tokenizer.vocab_size),
                           tokenizer.pad_id)
  with checkpoint.make_manager(workdir, read_only=True) as manager:
    if step not in manager.all_steps():
      raise CheckpointError(f"--step {step} is not in {manager.directory}; saved steps: "
                            f"{sorted(manager.all_steps())}")
    params = checkpoint.restore(manager, step, trainer.abstract_state, trainer.state_shardings,
                                params_only=True)["params"]
  steps = eval_data.eval_steps(config.train.eval_steps)
  metrics = evaluate_params(trainer, params, eval_data, steps)
  console(f"eval of {workdir} @ step {step} ({steps} batches of {config.train.batch_size}): "
          f"{format_metrics(metrics, EVAL_KEYS)}")
  result = {"step": step, "workdir": os.path.abspath(workdir), "eval_batches": steps, **metrics}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, f"eval_step_{step}.json"), "w", encoding="utf-8") as f:
      json.dump(result, f, indent=2)
  return result
