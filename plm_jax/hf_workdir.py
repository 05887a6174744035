"""`plm-jax import-hf` and `plm-jax export-hf`: Hugging Face directories <-> plm-jax workdirs."""

import os

import jax
import numpy as np

from plm_jax import checkpoint, hf, parallel
from plm_jax.data.tokenizer import TextTokenizer
from plm_jax.errors import CheckpointError
from plm_jax.metrics_writer import console


def _on_present_devices(config):
  """FSDP over the devices present, with a batch they divide (import/export run anywhere)."""
  with config.unlocked():
    config.mesh.update(data=1, fsdp=-1, tensor=1)
    n = jax.device_count()
    config.train.batch_size = max(config.train.batch_size, n) // n * n
  return config


def import_hf(hf_dir: str, workdir: str) -> dict:
  """Writes a workdir (config, tokenizer, checkpoint at step 0 with a fresh optimizer state) that
  `plm-jax train` (continued pretraining), `evaluate` and the downstream commands start from."""
  if os.path.exists(os.path.join(workdir, checkpoint.CONFIG_FILE)) or \
      checkpoint.latest_step(workdir) is not None:
    raise CheckpointError(f"--workdir {workdir!r} already holds a run; import into a new one")
  pretrained = hf.from_pretrained(hf_dir)
  if pretrained.tokenizer is None:
    raise CheckpointError(f"{hf_dir} has no tokenizer files (tokenizer.json, vocab.txt or "
                          "vocab.json + merges.txt); plm-jax needs one to train or evaluate")
  config = _on_present_devices(pretrained.config)
  from plm_jax.train import Trainer, setup_mesh   # local: keeps `import plm_jax.hf` light
  mesh = setup_mesh(config)
  vocab = config.model.vocab_size
  trainer = Trainer.create(config, mesh, vocab, pretrained.tokenizer.pad_id)
  import flax.nnx as nnx
  params = nnx.to_pure_dict(nnx.state(pretrained.model, nnx.Param))
  params = jax.device_put(params, trainer.state_shardings["params"])
  opt_state = jax.jit(trainer.optimizer.init,
                      out_shardings=trainer.state_shardings["opt_state"])(params)
  state = {"step": 0, "params": params, "opt_state": opt_state}
  checkpoint.save_config(workdir, config)
  if jax.process_index() == 0:
    pretrained.tokenizer.save(workdir)
  with checkpoint.make_manager(workdir, keep=config.checkpoint.keep) as manager:
    checkpoint.save(manager, 0, state, {"tokens_seen": 0,
                                        "imported_from": os.path.abspath(hf_dir)})
    manager.wait_until_finished()
  n_params = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(params))
  console(f"imported {hf_dir} ({config.model.family}, {n_params / 1e6:.1f}M parameters) into "
          f"{workdir}" + (f"; new (untrained) heads: {', '.join(pretrained.fresh)}"
                          if pretrained.fresh else ""))
  return {"workdir": workdir, "fresh": pretrained.fresh}


def export_hf(workdir: str, out: str, step: int | None = None) -> dict:
  """Writes the parameters of `step` (default: the latest) as a transformers directory."""
  from plm_jax.train import Trainer, padded_vocab
  config = _on_present_devices(checkpoint.load_config(workdir))
  mesh = parallel.make_mesh(parallel.validate(config, jax.device_count()))
  tokenizer = TextTokenizer.load(workdir)
  vocab = padded_vocab(config, tokenizer.vocab_size)
  trainer = Trainer.create(config, mesh, vocab, tokenizer.pad_id)
  with checkpoint.make_manager(workdir, read_only=True) as manager:
    steps = sorted(manager.all_steps())
    if not steps:
      raise CheckpointError(f"--workdir {workdir!r} holds no checkpoint")
    step = steps[-1] if step is None else step
    if step not in steps:
      raise CheckpointError(f"--step {step} is not in {manager.directory}; saved steps: {steps}")
    params = checkpoint.restore(manager, step, trainer.abstract_state, trainer.state_shardings,
                                params_only=True)["params"]
  hf.write_hf_directory(out, params, config, trainer.model_cfg, tokenizer)
  console(f"exported {workdir} @ step {step} to {out} ({hf.MODEL_TYPE_OF[config.model.family]},"
          f" vocab {vocab:,})")
  return {"out": out, "step": step}
