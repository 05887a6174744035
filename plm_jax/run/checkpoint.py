"""Checkpoints: the only module that talks to Orbax.

A workdir's checkpoints/<step>/ holds the Orbax items "params", "opt_state" and "meta" (small
JSON: tokens seen, the loader's position), saved asynchronously. Parameters and optimizer state
are separate items so that evaluation reads the parameters only. (The rest of a workdir:
plm_jax/workdir.py.)
"""

import dataclasses
import os
import re
from typing import Callable

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec

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


class CorruptCheckpoint(CheckpointError):
  """A checkpoint that cannot be read (`step`): a resuming run falls back to the one before."""

  def __init__(self, message: str, step: int):
    super().__init__(message)
    self.step = step


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: dict, shardings: dict,
            *, params_only: bool = False) -> dict:
  """Restores onto the given shardings (any mesh: Orbax reshards on load). A checkpoint from
  before the fused q/k/v projection is converted on the way in."""
  targets = {"params": _abstract(abstract_state["params"], shardings["params"])}
  if not params_only:
    targets["opt_state"] = _abstract(abstract_state["opt_state"], shardings["opt_state"])
  where = os.path.join(manager.directory, str(step))
  try:
    try:
      return _restore_items(manager, step, targets, params_only)
    except Exception:  # noqa: BLE001 - retried below only for layouts it knows
      conversions = _conversions(os.path.join(where, "params"), abstract_state["params"])
      if not conversions:
        raise
    old = targets
    for conversion in conversions:
      old = {k: _tree_map_dicts(v, conversion.to_old) for k, v in old.items()}
    restored = _restore_items(manager, step, old, params_only)
    for conversion in reversed(conversions):
      restored = {k: _tree_map_dicts(v, conversion.from_old) if k in targets else v
                  for k, v in restored.items()}
    return restored
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
    # the reader's own words, without its C++ type names and addresses
    detail = re.sub(r"\s+", " ", re.sub(r"<[^>]*>|\b[\w.]+::[\w:<>]+|\[[\w./:]+\]", "",
                                       detail)).strip(" ;:,")
    raise CorruptCheckpoint(
        f"checkpoint {where} is corrupt or incomplete ({detail}); delete that folder to resume "
        "from the previous checkpoint", step) from None


def _restore_items(manager, step: int, targets: dict, params_only: bool) -> dict:
  items = {k: ocp.args.StandardRestore(v) for k, v in targets.items()}
  if not params_only:
    items["meta"] = ocp.args.JsonRestore()
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  return {k: restored[k] for k in items}


# --- checkpoints of other layouts of the same model -------------------------------------------
# A checkpoint written with the layers unrolled restores into a model with stacked layers
# (model.scan_layers) and the other way round; one from before the fused q/k/v projection
# (attention/{query,key,value}/{kernel [.., E, N, H], bias [.., N, H]}, now attention/qkv/
# {kernel [.., E, 3, N, H], bias [.., 3, N, H]}) restores too. The optimizer's moments mirror
# the parameters and convert alike. Each conversion turns the model's abstract tree into the
# checkpoint's layout (to_old: what to ask Orbax for) and the restored arrays back (from_old).

@dataclasses.dataclass(frozen=True)
class Conversion:
  name: str
  to_old: Callable[[dict], dict]
  from_old: Callable[[dict], dict]


QKV_PARTS = ("query", "key", "value")
_PER_LAYER = re.compile(r"(^|/)layers/\d+/")
_STACKED = re.compile(r"(^|/)layers/[^\d/][^/]*/")


def _leaf_paths(tree) -> list[str]:
  return [_key_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def _conversions(item_dir: str, abstract_params) -> list[Conversion]:
  """What turns this model's layout into the saved one (empty: none known applies)."""
  try:
    saved = _leaf_paths(ocp.StandardCheckpointer().metadata(item_dir).item_metadata)
  except Exception:  # noqa: BLE001 - unreadable metadata: nothing to convert
    return []
  wanted = _leaf_paths(abstract_params)
  out = []
  has = lambda pattern, paths: any(pattern.search(p) for p in paths)  # noqa: E731
  if has(_PER_LAYER, saved) and has(_STACKED, wanted):
    out.append(Conversion("unrolled layers", _unstack_abstract, _stack_arrays))
  if has(_STACKED, saved) and has(_PER_LAYER, wanted):
    out.append(Conversion("stacked layers", _stack_abstract, _unstack_arrays))
  if any("/attention/query/" in f"/{p}" for p in saved):
    out.append(Conversion("separate q/k/v", _split_qkv, _fuse_qkv))
  return out


def _tree_map_dicts(tree, fn):
  """Applies `fn` to every dict of a tree of dicts, lists and (named) tuples, outermost first;
  `fn` returns the dict to use (whose values are then visited)."""
  if isinstance(tree, dict):
    tree = fn(tree)
    return {k: _tree_map_dicts(v, fn) for k, v in tree.items()}
  if isinstance(tree, tuple) and hasattr(tree, "_fields"):
    return type(tree)(*(_tree_map_dicts(v, fn) for v in tree))
  if isinstance(tree, (list, tuple)):
    return type(tree)(_tree_map_dicts(v, fn) for v in tree)
  return tree


def _spec(x) -> list:
  spec = list(x.sharding.spec)
  return spec + [None] * (len(x.shape) - len(spec))


def _sharding(x, spec: list) -> NamedSharding:
  return NamedSharding(x.sharding.mesh, PartitionSpec(*spec))


def _without_axis(x, axis: int) -> jax.ShapeDtypeStruct:
  """The abstract array of one slice along `axis` (that axis is never sharded)."""
  spec = _spec(x)
  del spec[axis]
  return jax.ShapeDtypeStruct(x.shape[:axis] + x.shape[axis + 1:], x.dtype,
                              sharding=_sharding(x, spec))


def _with_axis(x, axis: int, n: int) -> jax.ShapeDtypeStruct:
  spec = _spec(x)
  spec.insert(axis, None)
  return jax.ShapeDtypeStruct(x.shape[:axis] + (n,) + x.shape[axis:], x.dtype,
                              sharding=_sharding(x, spec))


def _stack(parts: list, axis: int) -> jax.Array:
  spec = _spec(parts[0])
  spec.insert(axis, None)
  return jax.jit(lambda *p: jnp.stack(p, axis), out_shardings=_sharding(parts[0], spec))(*parts)


def _take(x: jax.Array, i: int, axis: int) -> jax.Array:
  spec = _spec(x)
  del spec[axis]
  return jax.jit(lambda a: jnp.take(a, i, axis), out_shardings=_sharding(x, spec))(x)


def _int_keyed(d) -> bool:
  return isinstance(d, dict) and bool(d) and all(isinstance(k, int) for k in d)


def _stacked(d) -> bool:
  return isinstance(d, dict) and bool(d) and not any(isinstance(k, int) for k in d)


def _unstack_abstract(d: dict) -> dict:
  if not _stacked(d.get("layers")):
    return d
  n = jax.tree.leaves(d["layers"])[0].shape[0]
  return {**d, "layers": {i: jax.tree.map(lambda x: _without_axis(x, 0), d["layers"])
                          for i in range(n)}}


def _stack_arrays(d: dict) -> dict:
  if not _int_keyed(d.get("layers")):
    return d
  layers = [d["layers"][i] for i in sorted(d["layers"])]
  return {**d, "layers": jax.tree.map(lambda *xs: _stack(list(xs), 0), *layers)}


def _stack_abstract(d: dict) -> dict:
  if not _int_keyed(d.get("layers")):
    return d
  layers = [d["layers"][i] for i in sorted(d["layers"])]
  return {**d, "layers": jax.tree.map(lambda x: _with_axis(x, 0, len(layers)), layers[0])}


def _unstack_arrays(d: dict) -> dict:
  if not _stacked(d.get("layers")):
    return d
  n = jax.tree.leaves(d["layers"])[0].shape[0]
  return {**d, "layers": {i: jax.tree.map(lambda x, i=i: _take(x, i, 0), d["layers"])
                          for i in range(n)}}


def _qkv_axis(x) -> int:
  return len(x.shape) - 3            # kernel [.., E, 3, N, H], bias [.., 3, N, H]


def _split_qkv(d: dict) -> dict:
  if not isinstance(d.get("qkv"), dict):
    return d
  out = {k: v for k, v in d.items() if k != "qkv"}
  for name in QKV_PARTS:
    out[name] = {leaf: _without_axis(x, _qkv_axis(x)) for leaf, x in d["qkv"].items()}
  return out


def _fuse_qkv(d: dict) -> dict:
  if not all(isinstance(d.get(name), dict) for name in QKV_PARTS):
    return d
  out = {k: v for k, v in d.items() if k not in QKV_PARTS}
  out["qkv"] = {leaf: _stack([d[name][leaf] for name in QKV_PARTS],
                             len(d["query"][leaf].shape) - 2)
                for leaf in d["query"]}
  return out


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
