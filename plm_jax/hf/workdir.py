"""`plm-jax import-hf` and `plm-jax export-hf`: Hugging Face directories <-> plm-jax workdirs."""

import json
import os

import jax
import numpy as np

from plm_jax import checks, objectives, parallel, workdir as workdirs
from plm_jax.errors import CheckpointError, ConfigError
from plm_jax.hf import convert as hf
from plm_jax.inference import UNTRAINED_HEADS_FILE, fit_to_devices, load_params
from plm_jax.run import checkpoint
from plm_jax.run.metrics_writer import console
from plm_jax.trainer import Trainer


def import_hf(hf_dir: str, workdir: str) -> dict:
  """Writes a workdir (config, tokenizer, checkpoint at step 0 with a fresh optimizer state) that
  `plm-jax train` (continued pretraining), `evaluate` and the downstream commands start from."""
  if workdirs.has_config(workdir) or checkpoint.latest_step(workdir) is not None:
    raise CheckpointError(f"--workdir {workdir!r} already holds a run; import into a new one")
  pretrained = hf.from_pretrained(hf_dir)
  if pretrained.tokenizer is None:
    raise CheckpointError(f"{hf_dir} has no tokenizer files (tokenizer.json, vocab.txt, "
                          "vocab.json + merges.txt or spiece.model); plm-jax needs one to train "
                          "or evaluate")
  config = fit_to_devices(pretrained.config)
  checks.validate(config, jax.device_count())
  trainer = Trainer.create(config, parallel.mesh_for(config), config.model.vocab_size,
                           pretrained.tokenizer.pad_id)
  state = trainer.state_from_params(pretrained.params)
  workdirs.save_config(workdir, config)
  if jax.process_index() == 0:
    pretrained.tokenizer.save(workdir)
  if jax.process_index() == 0 and pretrained.fresh:
    # fill-mask warns that these heads are random until the run is pretrained further
    with open(os.path.join(workdir, UNTRAINED_HEADS_FILE), "w", encoding="utf-8") as f:
      json.dump(pretrained.fresh, f)
  with checkpoint.make_manager(workdir, keep=config.checkpoint.keep) as manager:
    checkpoint.save(manager, 0, state, {"tokens_seen": 0,
                                        "imported_from": os.path.abspath(hf_dir)})
    manager.wait_until_finished()
  n_params = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(pretrained.params))
  console(f"imported {hf_dir} ({config.model.family}, {n_params / 1e6:.1f}M parameters) into "
          f"{workdir}" + (f"; new (untrained) heads: {', '.join(pretrained.fresh)}"
                          if pretrained.fresh else ""))
  return {"workdir": workdir, "fresh": pretrained.fresh}


def export_hf(workdir: str, out: str, step: int | None = None, best: bool = False,
              overwrite: bool = False) -> dict:
  """Writes the parameters of `step` (default: the latest; `best`: a fine-tuning run's best
  checkpoint, in best/) as a transformers directory: a pretraining run as its family's
  pretraining model, a fine-tuned classifier as its *ForSequenceClassification (labels, and a
  tokenizer that lays out and pads texts as the classifier expects)."""
  present = sorted(os.listdir(out)) if os.path.isdir(out) else []
  if present and not overwrite:
    raise ConfigError(f"--out {out!r} is not empty ({len(present)} entries: "
                      f"{', '.join(present[:3])}{', ...' if len(present) > 3 else ''}); give a "
                      "new or empty directory, or --overwrite to write over the files of the "
                      "same names")
  config = workdirs.load_config(workdir)
  classifier = objectives.fine_tuned_head(config) is not None
  # every fine-tuning run keeps a best/ (generation's too, whose model is a plain GPT LM)
  if best and "finetune" not in config:
    raise CheckpointError(f"--best picks a fine-tuning run's best checkpoint; {workdir!r} holds "
                          "a pretraining run: drop --best (the latest) or give --step N")
  subdir = checkpoint.BEST_DIR if best else checkpoint.CHECKPOINT_DIR
  if best and not checkpoint.complete_steps(workdir, subdir):
    raise CheckpointError(f"--workdir {workdir!r} holds no best checkpoint ({subdir}/ is empty: "
                          "the run has not been evaluated yet); let plm-jax finetune reach its "
                          "first evaluation, or export the latest checkpoint without --best")
  loaded = load_params(workdir, step, subdir=subdir)
  mcfg = loaded.trainer.model_cfg
  hf.write_hf_directory(out, loaded.params, loaded.config, mcfg, loaded.tokenizer)
  kind = hf.hf_config_from_plm(loaded.config, mcfg.vocab_size, None)["architectures"][0]
  labels = f", {mcfg.num_labels} output(s)" if mcfg.num_labels else ""
  console(f"exported {workdir} @ {'best ' if best else ''}step {loaded.step} to {out} "
          f"({kind}{labels}, vocab {mcfg.vocab_size:,})")
  return {"out": out, "step": loaded.step}
