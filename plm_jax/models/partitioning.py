"""Logical axis names: the only thing the models know about parallelism.

Parameters carry their logical axes as `nnx.Param(..., axes=(...))` metadata; activations are
annotated with `constrain(x, names)`. `plm_jax.parallel` maps names to mesh axes with rules from
the config and activates them with `axis_rules(...)`; outside that context `constrain` is a no-op,
so the models run unchanged on one CPU.

Vocabulary (parameters): embed, heads, kv, mlp, vocab, length (position table), segment, classes.
Vocabulary (activations): batch, length, act_embed, heads, kv, mlp, vocab.
"""

import contextlib
import contextvars
from typing import Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# The device mesh's axes, and those a batch is split over (data parallel and FSDP).
MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

_RULES: contextvars.ContextVar = contextvars.ContextVar("plm_jax_axis_rules", default=None)


def logical_to_spec(names: Sequence[str | None], rules: dict) -> PartitionSpec:
  """Maps logical axis names to a PartitionSpec; a mesh axis is used at most once."""
  used: set[str] = set()
  spec = []
  for name in names:
    target = rules.get(name) if name is not None else None
    if target is None:
      spec.append(None)
      continue
    axes = (target,) if isinstance(target, str) else tuple(target)
    axes = tuple(a for a in axes if a not in used)
    used.update(axes)
    spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*spec)


@contextlib.contextmanager
def axis_rules(rules: dict, mesh: Mesh):
  """Activates logical->mesh rules for `constrain` while tracing a model."""
  token = _RULES.set((dict(rules), mesh))
  try:
    yield
  finally:
    _RULES.reset(token)


def active() -> tuple[dict, Mesh] | None:
  """(rules, mesh) of the enclosing `axis_rules`, or None outside one."""
  return _RULES.get()


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Sharding constraint on an activation by logical names; a no-op without active rules."""
  active = _RULES.get()
  if active is None:
    return x
  rules, mesh = active
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(names, rules)))
