"""Device mesh from the config, validation against the devices present, and shardings.

The mesh has three axes: `data` (replicated weights, split batch), `fsdp` (weights and batch
split, ZeRO-3 style) and `tensor` (weights split within a layer, Megatron style). Everything is
checked before anything is compiled, with errors that name the field and a value that works.
"""

import math

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from plm_jax.errors import ConfigError
from plm_jax.models.partitioning import logical_to_spec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


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


def validate(config, num_devices: int, num_processes: int | None = None
             ) -> tuple[int, int, int]:
  """Checks the config against the devices (of `num_processes` processes, default: this run's)
  and itself; returns the mesh shape."""
  shape = resolve_mesh_shape(config.mesh, num_devices)
  data, fsdp, tensor = shape
  m, t = config.model, config.train
  if m.family not in ("bert", "roberta", "albert", "gpt"):
    raise ConfigError(f"model.family={m.family!r} is not one of bert, roberta, albert, gpt")
  allowed = {"bert": ("mlm_nsp", "mlm", "mlm_sop"), "roberta": ("mlm",),
             "albert": ("mlm_sop", "mlm", "mlm_nsp"), "gpt": ("causal_lm",)}[m.family]
  if config.objective.name == "classify":
    from plm_jax.finetune.tasks import validate_classify   # fine-tuning: its own data fields
    validate_classify(config)
  elif config.objective.name not in allowed:
    raise ConfigError(f"objective.name={config.objective.name!r} does not fit model.family="
                      f"{m.family!r}; use --config.objective.name={allowed[0]}")
  else:
    from plm_jax.data.pipeline import check_builder   # data.builder must build that objective
    try:
      check_builder(config)
    except Exception as e:  # noqa: BLE001 - re-raised as a config error naming the field
      raise ConfigError(str(e)) from None
  if m.hidden_size % m.num_heads:
    raise ConfigError(f"model.hidden_size={m.hidden_size} is not divisible by model.num_heads="
                      f"{m.num_heads}")
  if m.num_heads % tensor:
    ok = [d for d in range(1, tensor + 1) if m.num_heads % d == 0 and num_devices % d == 0]
    raise ConfigError(f"model.num_heads={m.num_heads} is not divisible by mesh.tensor={tensor}; "
                      f"use --config.mesh.tensor={max(ok)}")
  if m.mlp_dim % tensor:
    raise ConfigError(f"model.mlp_dim={m.mlp_dim} is not divisible by mesh.tensor={tensor}")
  accum = config.optim.grad_accum_steps
  if accum < 1:
    raise ConfigError(f"optim.grad_accum_steps={accum} must be >= 1")
  processes = jax.process_count() if num_processes is None else num_processes
  unit = math.lcm(data * fsdp * accum, processes * accum)   # every process feeds whole rows
  if t.batch_size <= 0 or t.batch_size % unit:
    good = max(unit, -(-t.batch_size // unit) * unit)   # the next multiple up
    raise ConfigError(
        f"train.batch_size={t.batch_size} is not divisible by {unit} (mesh.data x mesh.fsdp "
        f"x optim.grad_accum_steps = {data}x{fsdp}x{accum}, over {processes} process(es)); "
        f"use --config.train.batch_size={good}")
  if config.data.max_seq_length > m.max_position:
    raise ConfigError(f"data.max_seq_length={config.data.max_seq_length} exceeds "
                      f"model.max_position={m.max_position}; lower it or raise max_position")
  for field in ("dtype", "param_dtype"):
    if m[field] not in ("float32", "bfloat16", "float16"):
      raise ConfigError(f"model.{field}={m[field]!r} is not one of float32, bfloat16, float16")
  if m.attention_impl not in ("xla", "cudnn"):
    raise ConfigError(f"model.attention_impl={m.attention_impl!r} is not 'xla' or 'cudnn'")
  if t.steps < 0 or config.checkpoint.every <= 0 or config.checkpoint.keep <= 0:
    raise ConfigError("train.steps must be >= 0, checkpoint.every and checkpoint.keep > 0")
  if t.prng_impl not in ("threefry2x32", "rbg", "unsafe_rbg"):
    raise ConfigError(f"train.prng_impl={t.prng_impl!r} is not threefry2x32, rbg, unsafe_rbg")
  if config.optim.schedule not in ("linear", "cosine", "constant"):
    raise ConfigError(f"optim.schedule={config.optim.schedule!r} is not linear/cosine/constant")
  return shape


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
  """Validates `config` against `devices` (default: all) and builds its (hybrid) mesh."""
  devices = jax.devices() if devices is None else list(devices)
  shape = validate(config, len(devices))
  return make_mesh(shape, devices, dcn_shape(config.mesh))


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
