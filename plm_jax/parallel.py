"""Device mesh from the config, and shardings.

The mesh has three axes: `data` (replicated weights, split batch), `fsdp` (weights and batch
split, ZeRO-3 style) and `tensor` (weights split within a layer, Megatron style). The mesh's
sizes are checked here, with errors that name the field and a value that works; the rest of the
config is checked by plm_jax.checks, which every command runs first.
"""

import math

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from plm_jax.errors import ConfigError
from plm_jax.models.partitioning import BATCH_AXES, MESH_AXES, logical_to_spec


DCN_FIELDS = tuple(f"dcn_{a}" for a in MESH_AXES)


def dcn_shape(mesh_cfg) -> tuple[int, int, int]:
  """Sizes of the axes across slices / nodes (DCN); 1 each on one slice or node."""
  sizes = tuple(int(mesh_cfg.get(f, 1)) for f in DCN_FIELDS)
  if any(s < 1 for s in sizes):
    raise ConfigError(f"config.mesh: {dict(zip(DCN_FIELDS, sizes))}: DCN sizes must be >= 1 "
                      "(-1 is for the ICI sizes data / fsdp / tensor only)")
  return sizes


def resolve_mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
  """Total sizes of (data, fsdp, tensor): ICI size x DCN size per axis, with at most one ICI
  size of -1 filled in from the devices of one slice / node."""
  dcn = dcn_shape(mesh_cfg)
  granules = math.prod(dcn)
  if num_devices % granules:
    raise ConfigError(
        f"config.mesh: DCN sizes {dict(zip(DCN_FIELDS, dcn))} make {granules} slices / nodes, "
        f"which does not divide the {num_devices} devices present; set them to the number of "
        "slices / nodes of the run (1 each on one)")
  per = num_devices // granules
  where = "present" if granules == 1 else f"in each of the {granules} slices / nodes"
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  given = ", ".join(f"{a}={s}" for a, s in zip(MESH_AXES, sizes))
  if any(s == 0 or s < -1 for s in sizes):
    raise ConfigError(f"config.mesh: {given}: sizes must be positive or -1 (the rest)")
  if sizes.count(-1) > 1:
    raise ConfigError(f"config.mesh: {given}: at most one axis may be -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if per % known:
      raise ConfigError(
          f"config.mesh: {given}: the fixed axes use {known} devices, which does not divide the "
          f"{per} {where}; e.g. --config.mesh.data=1 --config.mesh.fsdp=-1 "
          "--config.mesh.tensor=1")
    sizes[sizes.index(-1)] = per // known
  elif known != per:
    raise ConfigError(
        f"config.mesh: {given} needs {known} devices but {per} are {where}; "
        f"e.g. --config.mesh.fsdp=-1 (fills the rest) or --config.mesh.fsdp={per} "
        "--config.mesh.data=1 --config.mesh.tensor=1")
  return tuple(s * d for s, d in zip(sizes, dcn))


def make_mesh(shape: tuple[int, int, int], devices=None,
              dcn: tuple[int, int, int] = (1, 1, 1)) -> Mesh:
  """The mesh of total sizes `shape`. With DCN sizes > 1 it is a hybrid mesh: the devices are
  grouped into slices (TPU `slice_index`) or nodes (GPU: consecutive processes), each group laid
  out by its physical topology with the ICI sizes, the groups tiled by the DCN sizes; so only
  the DCN axes' collectives cross the slow links."""
  devices = jax.devices() if devices is None else list(devices)
  if math.prod(dcn) == 1:
    return Mesh(_granule_mesh(shape, devices), MESH_AXES)
  ici = tuple(s // d for s, d in zip(shape, dcn))
  groups = _granules(devices, math.prod(dcn))
  blocks = np.empty(dcn, dtype=object)
  for index, group in zip(np.ndindex(*dcn), groups):
    blocks[index] = _granule_mesh(ici, group)
  return Mesh(np.block(blocks.tolist()), MESH_AXES)


def _granule_mesh(shape, devices) -> np.ndarray:
  try:
    return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  except (AssertionError, ValueError, NotImplementedError):
    return np.asarray(devices).reshape(shape)     # CPU / unusual topologies: plain order


def _granules(devices, count: int) -> list[list]:
  """The devices split into `count` slices (by slice_index) or else nodes (by process)."""
  slices = sorted({getattr(d, "slice_index", 0) or 0 for d in devices})
  if len(slices) == count:
    return [[d for d in devices if (getattr(d, "slice_index", 0) or 0) == s] for s in slices]
  processes = sorted({d.process_index for d in devices})
  if len(slices) == 1 and len(processes) % count == 0:
    per_node = len(processes) // count     # processes of a node are consecutive (SLURM, TPU)
    return [[d for d in devices if processes.index(d.process_index) // per_node == g]
            for g in range(count)]
  raise ConfigError(
      f"config.mesh: the DCN sizes make {count} slices / nodes, but the devices come from "
      f"{len(slices)} slice(s) and {len(processes)} process(es); set mesh.dcn_* to the number "
      "of slices (multi-slice TPU) or nodes (GPU clusters)")


def mesh_for(config, devices=None) -> Mesh:
  """The (hybrid) mesh of an already validated `config` (plm_jax.checks) over `devices`
  (default: all)."""
  devices = jax.devices() if devices is None else list(devices)
  return make_mesh(resolve_mesh_shape(config.mesh, len(devices)), devices,
                   dcn_shape(config.mesh))


def rules_dict(config) -> dict:
  return {name: (tuple(t) if isinstance(t, (list, tuple)) else t)
          for name, t in config.mesh.rules}


def param_specs(abstract_state, rules: dict):
  """PartitionSpec for every nnx.Param of an (abstract) nnx.State, from its `axes` metadata."""
  def spec(v):
    axes = v.get_metadata().get("axes")
    if axes is None:
      return PartitionSpec()
    if len(axes) != v.ndim:
      raise ValueError(f"parameter of shape {v.shape} has axes {axes}")
    return logical_to_spec(axes, rules)
  return jax.tree.map(spec, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def named(mesh: Mesh, spec_tree):
  return jax.tree.map(lambda s: NamedSharding(mesh, s), spec_tree,
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())
