"""`plm-jax import-hf` and `plm-jax export-hf`: Hugging Face directories <-> plm-jax workdirs."""

import os

import jax
import numpy as np

from flax import nnx

from plm_jax import checkpoint, hf
from plm_jax.errors import CheckpointError
from plm_jax.inference import fit_to_devices, load_model
from plm_jax.metrics_writer import console


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
  config = fit_to_devices(pretrained.config)
  from plm_jax.train import Trainer, setup_mesh   # local: keeps `import plm_jax.hf` light
  mesh = setup_mesh(config)
  vocab = config.model.vocab_size
  trainer = Trainer.create(config, mesh, vocab, pretrained.tokenizer.pad_id)
  state = trainer.state_from_params(nnx.to_pure_dict(nnx.state(pretrained.model, nnx.Param)))
  params = state["params"]
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
  if checkpoint.load_config(workdir).objective.name == "classify":
    raise CheckpointError(f"export-hf writes pretraining models; {workdir!r} holds a fine-tuned "
                          "classifier (export its pretraining run, or use its test_predictions)")
  restored = load_model(workdir, step)
  config, tokenizer, trainer, step = (restored.config, restored.tokenizer, restored.trainer,
                                      restored.step)
  vocab = trainer.model_cfg.vocab_size
  params = nnx.to_pure_dict(nnx.state(restored.model, nnx.Param))
  hf.write_hf_directory(out, params, config, trainer.model_cfg, tokenizer)
  console(f"exported {workdir} @ step {step} to {out} ({hf.MODEL_TYPE_OF[config.model.family]},"
          f" vocab {vocab:,})")
  return {"out": out, "step": step}
