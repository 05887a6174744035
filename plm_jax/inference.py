"""Using a trained (or imported) model: its parameters restored from a workdir on any devices
(`load_params`, the one restore path of evaluate, export, fine-tuning and inference), text
generation and fill-mask."""

import dataclasses
import json
import os

import jax
import numpy as np
from flax import nnx

from plm_jax import checks, families, objectives, parallel, workdir as workdirs
from plm_jax.data.tokenizer import TextTokenizer
from plm_jax.errors import CheckpointError, ConfigError
from plm_jax.models.generate import SamplingConfig, generate
from plm_jax.models.config import padded_vocab
from plm_jax.run import checkpoint
from plm_jax.trainer import Trainer


@dataclasses.dataclass
class Loaded:
  """The parameters of one checkpoint, placed on their shards, and what they need."""
  params: dict             # pure dict, as the trainer's state holds them
  config: object
  tokenizer: TextTokenizer
  step: int
  trainer: Trainer         # its mesh, shardings and compiled steps (built abstractly)

  def module(self) -> nnx.Module:
    """The parameters as a callable model (generation, fill-mask)."""
    return self.trainer.model(self.params)


def fit_to_devices(config, num_devices: int | None = None):
  """FSDP over the devices present with a batch they divide: restoring works on any machine,
  whatever mesh the run was trained on (Orbax reshards on load)."""
  n = jax.device_count() if num_devices is None else num_devices
  with config.unlocked():
    config.mesh.update(data=1, fsdp=-1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1)
    config.train.batch_size = max(config.train.batch_size, n) // n * n
    config.optim.grad_accum_steps = 1       # evaluation and inference take whole batches
  return config


def restore_config(workdir: str, devices, config=None):
  """The config a workdir is restored with on `devices`: `config` (the workdir's with the
  command's overrides), else the workdir's with FSDP over the devices; checked once, here."""
  if config is None:
    config = fit_to_devices(workdirs.load_config(workdir), len(devices))
  checks.validate(config, len(devices))
  return config


def load_params(workdir: str, step: int | None = None, devices=None, config=None,
                subdir: str = checkpoint.CHECKPOINT_DIR) -> Loaded:
  """The parameters of `step` (default: the latest) of a workdir, on `devices` (default: all);
  the optimizer state is never read.

  `config` is one the command checked already (restore_config); without it, the workdir's
  with FSDP over the devices, checked here. `subdir` picks another set of checkpoints
  (checkpoint.BEST_DIR: the best fine-tuned model).
  """
  devices = jax.devices() if devices is None else list(devices)
  if config is None:
    config = restore_config(workdir, devices)
  mesh = parallel.mesh_for(config, devices)
  tokenizer = TextTokenizer.load(workdir)
  trainer = Trainer.create(config, mesh, padded_vocab(config, tokenizer.vocab_size),
                           tokenizer.pad_id)
  if not os.path.isdir(checkpoint.checkpoint_dir(workdir, subdir)):
    raise CheckpointError(f"--workdir {workdir!r} holds no checkpoint in {subdir}/ yet")
  with checkpoint.make_manager(workdir, read_only=True, subdir=subdir) as manager:
    steps = sorted(manager.all_steps())
    if not steps:
      raise CheckpointError(f"--workdir {workdir!r} holds no checkpoint in {subdir}/ yet")
    step = steps[-1] if step is None else step
    if step not in steps:
      raise CheckpointError(f"--step {step} is not in {manager.directory}; saved steps: {steps}")
    params = checkpoint.restore(manager, step, trainer.abstract_state, trainer.state_shardings,
                                params_only=True)["params"]
  return Loaded(params, config, tokenizer, step, trainer)


def _not_a_classifier(restored: Loaded, command: str) -> None:
  head = objectives.fine_tuned_head(restored.config)
  if head:
    raise ConfigError(f"{command} needs a pretrained model with its language-model head; this "
                      f"workdir holds a fine-tuned {head} "
                      "(use plm-jax evaluate), or give "
                      f"its pretraining run: {restored.config.finetune.init_from}")


def generate_text(restored: Loaded, prompts: list[str], cfg: SamplingConfig,
                  num_samples: int = 1) -> list[list[str]]:
  """`num_samples` continuations of each prompt (decoded text of the new tokens)."""
  _not_a_classifier(restored, "generate")
  if not families.get(restored.config.model.family).decoder:
    raise ConfigError(f"generate needs a GPT model (a decoder); {restored.config.model.family} "
                      "is an encoder (use fill-mask)")
  tok = restored.tokenizer
  ids = [tok.encode_batch([p])[0] or [tok.eos_id] for p in prompts]
  check_sampling(cfg, max(map(len, ids)), restored.config.model.max_position)
  cfg = dataclasses.replace(cfg, eos_id=tok.eos_id if cfg.eos_id is None else cfg.eos_id)
  rows = [i for i in ids for _ in range(num_samples)]
  out = generate(restored.module(), rows, cfg)
  texts = [tok.decode([t for t in r if t != tok.eos_id]) for r in out]
  return [texts[i * num_samples:(i + 1) * num_samples] for i in range(len(prompts))]


def check_sampling(cfg: SamplingConfig, longest_prompt: int, max_position: int) -> None:
  """The sampling settings a user gives, checked before anything is compiled."""
  if cfg.max_new_tokens < 1:
    raise ConfigError(f"--max-new-tokens {cfg.max_new_tokens} must be >= 1")
  if longest_prompt + cfg.max_new_tokens > max_position:
    room = max_position - longest_prompt
    raise ConfigError(f"the prompt ({longest_prompt} tokens) + --max-new-tokens "
                      f"{cfg.max_new_tokens} exceed the model's {max_position} positions; use "
                      + (f"--max-new-tokens {room}" if room > 0 else "a shorter prompt"))
  if cfg.temperature < 0:
    raise ConfigError(f"--temperature {cfg.temperature} must be >= 0 (0 = greedy)")
  if not 0 < cfg.top_p <= 1:
    raise ConfigError(f"--top-p {cfg.top_p} must be in (0, 1] (1 = no nucleus filter)")
  if cfg.top_k < 0:
    raise ConfigError(f"--top-k {cfg.top_k} must be >= 0 (0 = all tokens)")
  if cfg.repetition_penalty <= 0:
    raise ConfigError(f"--repetition-penalty {cfg.repetition_penalty} must be > 0 (1 = none; "
                      "1.2 is common)")
  if cfg.no_repeat_ngram_size < 0:
    raise ConfigError(f"--no-repeat-ngram-size {cfg.no_repeat_ngram_size} must be >= 0 "
                      "(0 = none)")


def fill_mask(restored: Loaded, text: str, top_k: int = 5) -> list[list[tuple[str, float]]]:
  """For each mask token in `text`, the top-k tokens and their probabilities."""
  _not_a_classifier(restored, "fill-mask")
  if families.get(restored.config.model.family).decoder:
    raise ConfigError("fill-mask needs an encoder (BERT, RoBERTa, ALBERT) or XLNet; this is a "
                      "decoder "
                      f"({restored.config.model.family}: use generate)")
  tok = restored.tokenizer
  mask_token = tok.role_token("mask")
  layout = families.get(restored.config.model.family).pair_layout   # [CLS] text [SEP], ...
  ids = [*(tok.role_id(r) for r in layout.prefix), *tok.encode_batch([text])[0],
         *(tok.role_id(r) for r in layout.suffix)]
  where = [i for i, t in enumerate(ids) if t == tok.mask_id]
  if not where:
    raise ConfigError(f"--text has no {mask_token} token to fill, e.g. "
                      f"\"Paris is the {mask_token} of France.\"")
  limit = restored.config.model.max_position - (2 if restored.config.model.position_offset
                                                 else 0)
  if len(ids) > limit:
    raise ConfigError(f"--text is {len(ids)} tokens long; the model takes {limit}")
  input_ids = np.array([ids], np.int32)
  segment_ids = np.zeros_like(input_ids)
  if layout.last_segment is not None:
    segment_ids[:, -1] = layout.last_segment
  out = restored.module()(input_ids, segment_ids, np.ones_like(input_ids),
                          np.array([where], np.int32))
  probs = np.asarray(jax.nn.softmax(out["mlm_logits"][0], axis=-1))
  probs = probs[:, :tok.vocab_size]                  # never propose padded vocabulary rows
  results = []
  for row in probs:
    best = np.argsort(-row)[:top_k]
    results.append([(tok.tokenizer.id_to_token(int(i)), float(row[i])) for i in best])
  return results


def filled_text(restored: Loaded, text: str, results: list) -> str:
  """`text` with each mask replaced by its most likely token (decoded as the tokenizer joins
  pieces: "##" continuations, byte-level spaces, SentencePiece's "▁")."""
  tok = restored.tokenizer
  best = iter(tok.id_of(candidates[0][0]) for candidates in results)
  ids = [next(best) if t == tok.mask_id else t for t in tok.encode_batch([text])[0]]
  return tok.decode(ids)


UNTRAINED_HEADS_FILE = "untrained_heads.json"


def untrained_heads(restored: Loaded, workdir: str) -> list[str]:
  """The heads that an import left at their initial values, while the restored step is still
  the import's (a later step of continued pretraining has trained them)."""
  path = os.path.join(workdir, UNTRAINED_HEADS_FILE)
  if restored.step != 0 or not os.path.exists(path):
    return []
  try:
    with open(path, encoding="utf-8") as f:
      return list(json.load(f))
  except (OSError, ValueError):
    return []
