"""Checkpoints: the only module that talks to Orbax.

Layout of a workdir:
  config.json            the full config of the run (what `evaluate` rebuilds the model from)
  tokenizer.json         the tokenizer (a restored run needs nothing else)
  checkpoints/<step>/    Orbax items "params" and "opt_state", saved asynchronously
Parameters and optimizer state are separate items so that evaluation reads the parameters only.
"""

import json
import os

import jax
import ml_collections
import orbax.checkpoint as ocp

from plm_jax.errors import CheckpointError

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
# Config sections that define what a checkpoint *is*; a workdir whose saved values differ holds
# a different model, and resuming from it must be refused.
IDENTITY_FIELDS = {
    "model": ("family", "vocab_size", "vocab_pad_multiple", "hidden_size", "num_layers",
              "num_heads", "mlp_dim", "max_position", "type_vocab_size", "param_dtype",
              "embedding_size", "shared_layers"),
    "objective": ("name",),
    "data": ("vocab_size", "lowercase"),
    "classify": ("task", "num_classes"),
}


BEST_DIR = "best"            # fine-tuning: the best checkpoint by the task's metric


def checkpoint_dir(workdir: str, subdir: str = CHECKPOINT_DIR) -> str:
  return os.path.join(os.path.abspath(workdir), subdir)


def make_manager(workdir: str, *, keep: int = 3, async_save: bool = True,
                 read_only: bool = False, subdir: str = CHECKPOINT_DIR) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=None if read_only else keep, create=not read_only,
      save_interval_steps=0 if read_only else 1,
      enable_async_checkpointing=async_save and not read_only, read_only=read_only)
  return ocp.CheckpointManager(checkpoint_dir(workdir, subdir), options=options,
                               item_names=("params", "opt_state", "meta"))


def latest_step(workdir: str, subdir: str = CHECKPOINT_DIR) -> int | None:
  if not os.path.isdir(checkpoint_dir(workdir, subdir)):
    return None
  with make_manager(workdir, read_only=True, subdir=subdir) as manager:
    return manager.latest_step()


def save(manager: ocp.CheckpointManager, step: int, state: dict, meta: dict) -> None:
  """Starts an (asynchronous) save; `meta` is small JSON (e.g. tokens seen). A state without
  "opt_state" saves the parameters only (the best fine-tuned model)."""
  items = {"params": ocp.args.StandardSave(state["params"]), "meta": ocp.args.JsonSave(meta)}
  if "opt_state" in state:
    items["opt_state"] = ocp.args.StandardSave(state["opt_state"])
  manager.save(step, args=ocp.args.Composite(**items))


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict:
  return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def _abstract(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: dict, shardings: dict,
            *, params_only: bool = False) -> dict:
  """Restores onto the given shardings (any mesh: Orbax reshards on load)."""
  items = {"params": ocp.args.StandardRestore(
      _abstract(abstract_state["params"], shardings["params"]))}
  if not params_only:
    items["opt_state"] = ocp.args.StandardRestore(
        _abstract(abstract_state["opt_state"], shardings["opt_state"]))
    items["meta"] = ocp.args.JsonRestore()
  where = os.path.join(manager.directory, str(step))
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**items))
  except Exception as e:  # noqa: BLE001 - Orbax/TensorStore raise many types; all are reported
    detail = " ".join(str(e).split())[:300]
    # Which it is comes from the checkpoint's own metadata, not from the wording of the error.
    mismatch = _params_mismatch(os.path.join(where, "params"), abstract_state["params"])
    if mismatch:
      raise CheckpointError(
          f"checkpoint {where} does not fit this model's parameters ({mismatch}); it was "
          "written by a different model: use a fresh --workdir") from None
    raise CheckpointError(
        f"checkpoint {where} is corrupt or incomplete ({detail}); delete that folder to resume "
        "from the previous checkpoint") from None
  return {k: restored[k] for k in items}


def _key_path(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _params_mismatch(params_dir: str, abstract_params) -> str | None:
  """How the saved parameters' names and shapes differ from the model's; None if they agree
  (or the metadata is unreadable: then the checkpoint is corrupt, not foreign)."""
  try:
    tree = ocp.StandardCheckpointer().metadata(params_dir).item_metadata
    saved = {_key_path(p): tuple(m.shape) for p, m in jax.tree_util.tree_leaves_with_path(tree)}
  except Exception:  # noqa: BLE001 - unreadable metadata: corrupt
    return None
  if not saved:          # Orbax gives no tree when the array store itself is unreadable
    return None
  wanted = {_key_path(p): tuple(x.shape)
            for p, x in jax.tree_util.tree_leaves_with_path(abstract_params)}
  for name in sorted(wanted.keys() | saved.keys()):
    if name not in saved:
      return f"{name} is missing"
    if name not in wanted:
      return f"{name} is not a parameter of this model"
    if saved[name] != wanted[name]:
      return f"{name} has shape {saved[name]}, the model {wanted[name]}"
  return None


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
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{path} is unreadable ({e}); restore it from the run's logs") from None
  raw["mesh"]["rules"] = tuple((k, tuple(v) if isinstance(v, list) else v)
                               for k, v in raw["mesh"]["rules"])
  return _with_current_defaults(raw)


def _with_current_defaults(raw: dict) -> ml_collections.ConfigDict:
  """The saved values over today's defaults: a workdir written before a field existed still
  loads, with that field at its default."""
  from plm_jax.configlib import make_config  # local: configlib is not needed by Orbax users
  m = raw["model"]
  config = make_config(
      family=m["family"], objective=raw["objective"]["name"], size_name=m.get("size", "?"),
      size={k: m[k] for k in ("hidden_size", "num_layers", "num_heads", "mlp_dim",
                              "max_position", "layer_norm_eps") if k in m},
      mesh="auto", data={}, train={}, optim={})
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
  return diffs
