"""Checkpoints: the only module that talks to Orbax.

A workdir's checkpoints/<step>/ holds the Orbax items "params", "opt_state" and "meta" (small
JSON: tokens seen, the loader's position), saved asynchronously. Parameters and optimizer state
are separate items so that evaluation reads the parameters only. (The rest of a workdir:
plm_jax/workdir.py.)
"""

import os

import jax
import orbax.checkpoint as ocp

from plm_jax.errors import CheckpointError

CHECKPOINT_DIR = "checkpoints"
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


def complete_steps(workdir: str, subdir: str = CHECKPOINT_DIR) -> list[int]:
  """The steps whose checkpoint was finalised, read from the directory alone (Orbax writes a
  step into a temporary folder and renames it when complete): also when Orbax itself cannot
  answer, e.g. on a full disk."""
  try:
    names = os.listdir(checkpoint_dir(workdir, subdir))
  except OSError:
    return []
  return sorted(int(n) for n in names if n.isdigit())


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
    mismatch = _tree_mismatch(os.path.join(where, "params"), abstract_state["params"])
    if mismatch:
      raise CheckpointError(
          f"checkpoint {where} does not fit this model's parameters ({mismatch}); it was "
          "written by a different model: use a fresh --workdir") from None
    if not params_only:
      mismatch = _tree_mismatch(os.path.join(where, "opt_state"), abstract_state["opt_state"])
      if mismatch:
        raise OptimizerMismatch(
            f"checkpoint {where} holds an optimizer state of another shape than this config's "
            f"optimizer ({mismatch})") from None
    raise CheckpointError(
        f"checkpoint {where} is corrupt or incomplete ({detail}); delete that folder to resume "
        "from the previous checkpoint") from None
  return {k: restored[k] for k in items}


def _key_path(path) -> str:
  # DictKey .key, SequenceKey .idx, GetAttrKey .name (optax states are named tuples)
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                  for k in path)


class OptimizerMismatch(CheckpointError):
  """The parameters fit but the optimizer state does not: the optimizer's config changed."""


def _tree_mismatch(item_dir: str, abstract_tree) -> str | None:
  """How a saved item's names and shapes differ from `abstract_tree`'s; None if they agree (or
  the metadata is unreadable: then the checkpoint is corrupt, not foreign)."""
  try:
    tree = ocp.StandardCheckpointer().metadata(item_dir).item_metadata
    saved = {_key_path(p): tuple(m.shape) for p, m in jax.tree_util.tree_leaves_with_path(tree)}
  except Exception:  # noqa: BLE001 - unreadable metadata: corrupt
    return None
  if not saved:          # Orbax gives no tree when the array store itself is unreadable
    return None
  wanted = {_key_path(p): tuple(x.shape)
            for p, x in jax.tree_util.tree_leaves_with_path(abstract_tree)}
  for name in sorted(wanted.keys() | saved.keys()):
    if name not in saved:
      return f"{name} is missing"
    if name not in wanted:
      return f"{name} is not expected here"
    if saved[name] != wanted[name]:
      return f"{name} has shape {saved[name]}, the model {wanted[name]}"
  return None
