"""The workdir: what lives in it, which run it belongs to, and reading its config back.

Layout of a workdir:
  config.json            the full config of the run (what `evaluate` rebuilds the model from)
  tokenizer.json         the tokenizer (a restored run needs nothing else)
  checkpoints/<step>/    Orbax items params, opt_state, meta (plm_jax/run/checkpoint.py)
  best/<step>/           fine-tuning: the best checkpoint by the task's metric
  metrics.jsonl, tensorboard/
Nothing here writes until a run has been accepted (`inspect` only reads).
"""

import dataclasses
import json
import os

import jax
import ml_collections

from plm_jax import objectives
from plm_jax.configlib import make_config, with_moved_fields
from plm_jax.data.tokenizer import TOKENIZER_FILE, TextTokenizer
from plm_jax.errors import CheckpointError, ConfigError
from plm_jax.run import checkpoint

CONFIG_FILE = "config.json"
REQUIRED_GROUPS = ("model", "objective", "data", "optim", "train", "checkpoint", "mesh")
# Config fields that define what a checkpoint *is*; a workdir whose saved values differ holds
# a different model, and resuming from it must be refused.
IDENTITY_FIELDS = {
    "model": ("family", "vocab_size", "vocab_pad_multiple", "hidden_size", "num_layers",
              "num_heads", "mlp_dim", "max_position", "type_vocab_size", "param_dtype",
              "embedding_size", "shared_layers"),
    "objective": ("name",),
    "data": ("vocab_size", "lowercase"),
    "finetune": ("task",),
}


def has_config(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, CONFIG_FILE))


def save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, CONFIG_FILE), "w", encoding="utf-8") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise CheckpointError(f"{path} does not exist: --workdir {workdir!r} holds no plm-jax run "
                          "(train one with `plm-jax train --config ... --workdir DIR`)")
  try:
    with open(path, encoding="utf-8") as f:
      raw = json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{path} is unreadable ({e}); restore it from the run's logs (its "
                          "first lines), or give --config with the config the run used") from None
  missing = [g for g in REQUIRED_GROUPS if not isinstance(raw, dict) or
             not isinstance(raw.get(g), dict)]
  if missing or "family" not in raw["model"] or "name" not in raw["objective"]:
    raise CheckpointError(f"{path} is not a plm-jax config (missing "
                          f"{', '.join(missing) or 'model.family / objective.name'}); restore it "
                          "from the run's logs, or give --config with the config the run used")
  rules = raw["mesh"].get("rules")
  if rules is not None:
    raw["mesh"]["rules"] = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in rules)
  try:
    return _with_current_defaults(with_moved_fields(raw))
  except (KeyError, TypeError, ValueError, ConfigError) as e:
    raise CheckpointError(f"{path} is not a valid plm-jax config ({e}); restore it from the "
                          "run's logs, or give --config with the config the run used") from None


def _with_current_defaults(raw: dict) -> ml_collections.ConfigDict:
  """The saved values over today's defaults: a workdir written before a field existed still
  loads, with that field at its default."""
  m = raw["model"]
  config = make_config(
      family=m["family"], objective=raw["objective"]["name"], size_name=m.get("size", "?"),
      model={k: m[k] for k in ("hidden_size", "num_layers", "num_heads", "mlp_dim",
                               "max_position", "layer_norm_eps") if k in m})
  for section, values in raw.items():
    if isinstance(values, dict) and section in config:
      config[section].update(values)
    else:
      config[section] = values
  return config


def identity_mismatches(saved: ml_collections.ConfigDict,
                        current: ml_collections.ConfigDict) -> list[str]:
  """Fields that make `current` a different model from the one saved in a workdir."""
  diffs = []
  for section, fields in IDENTITY_FIELDS.items():
    for field in fields:
      a = saved[section].get(field) if section in saved else None
      b = current[section].get(field) if section in current else None
      if a != b:
        diffs.append(f"{section}.{field}: saved {a!r}, now {b!r}")
  if not diffs:                    # the same objective: the head it grows (a classifier's outputs)
    a, b = (objectives.of(c).model_fields(c) for c in (saved, current))
    diffs += [f"the head's {k}: saved {a[k]!r}, now {b.get(k)!r}" for k in a if a[k] != b.get(k)]
  return diffs


@dataclasses.dataclass
class Found:
  """What a workdir already holds (nothing, for a fresh one)."""
  step: int | None                         # the latest checkpoint
  config: ml_collections.ConfigDict | None  # config.json
  tokenizer: TextTokenizer | None          # tokenizer.json


def inspect(workdir: str) -> Found:
  """Reads what `workdir` holds, refusing checkpoints without the config that explains them."""
  step = checkpoint.latest_step(workdir)
  if not has_config(workdir):
    if step is not None:
      raise CheckpointError(f"--workdir {workdir!r} has checkpoints but no {CONFIG_FILE}; it "
                            "was not written by plm-jax: use a fresh --workdir")
    return Found(None, None, None)
  tokenizer = None
  if os.path.exists(os.path.join(workdir, TOKENIZER_FILE)):
    tokenizer = TextTokenizer.load(workdir)
  return Found(step, load_config(workdir), tokenizer)


def check_same_model(workdir: str, found: Found, config) -> None:
  """Refuses to continue a workdir that holds another model."""
  if found.config is None:
    return
  diffs = identity_mismatches(found.config, config)
  if diffs:
    raise CheckpointError(
        f"--workdir {workdir!r} holds a checkpoint of a different model ({'; '.join(diffs)}); "
        "use a fresh --workdir, or the config it was trained with")
