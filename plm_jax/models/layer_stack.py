"""The transformer blocks of a model, unrolled or stacked and scanned.

With `model.scan_layers` (the default) the blocks' parameters are stored stacked: one module
whose every parameter has a leading "layers" axis of length L (its logical axis, never
sharded), run by one `lax.scan`. XLA then compiles the block once, and the optimizer, the
gradient and the checks on it see one array per block parameter instead of L, so compile time
stops growing with depth. The blocks are created one by one from the same random stream either
way, so a scanned and an unrolled model of one seed have the same weights: converting between
the layouts is stacking or slicing (plm_jax/checkpoint.py restores either into either).

ALBERT's one shared block is applied L times: scanned, it is closed over, not stacked.
"""

import jax
import jax.numpy as jnp
from flax import nnx

LAYERS_AXIS = "layers"      # the logical axis of the stacked dimension (replicated)


def _is_variable(x) -> bool:
  return isinstance(x, nnx.Variable)


def stack(blocks: list[nnx.Module]) -> nnx.Module:
  """One module of the blocks' structure whose parameters are the blocks' stacked."""
  graphdef, _ = nnx.split(blocks[0])
  states = [nnx.split(block)[1] for block in blocks]

  def stacked(*variables):
    first = variables[0]
    axes = first.get_metadata().get("axes")
    return first.replace(jnp.stack([v[...] for v in variables]),
                         axes=None if axes is None else (LAYERS_AXIS, *axes))

  return nnx.merge(graphdef, jax.tree.map(stacked, *states, is_leaf=_is_variable))


def is_stacked(layers) -> bool:
  return not isinstance(layers, (list, tuple, nnx.List))


def run(layers, x, mask, keys, *, num_layers: int, remat: bool, scan: bool):
  """Applies the blocks in order, each with its own dropout key (the same keys, in the same
  order, whatever the layout: scanned and unrolled agree to float rounding).

  layers: a stacked module, or a list of blocks (ALBERT: one block, applied num_layers times).
  """
  layer_keys = [keys.next() if keys is not None else None for _ in range(num_layers)]
  if is_stacked(layers):
    graphdef, state = nnx.split(layers)
    return _scan(lambda s: nnx.merge(graphdef, s), state, x, mask, layer_keys, remat)
  blocks = list(layers) * (num_layers if len(layers) == 1 else 1)
  if scan and len(layers) == 1 and num_layers > 1:           # ALBERT: closed over, not stacked
    graphdef, state = nnx.split(layers[0])
    return _scan(lambda _: nnx.merge(graphdef, state), None, x, mask, layer_keys, remat,
                 length=num_layers)
  call = nnx.remat(lambda block, h, m, k: block(h, m, k)) if remat else (
      lambda block, h, m, k: block(h, m, k))
  for block, key in zip(blocks, layer_keys):
    x = call(block, x, mask, key)
  return x


def _scan(block_of, state, x, mask, layer_keys, remat: bool, length: int | None = None):
  stacked_keys = None if layer_keys[0] is None else jnp.stack(layer_keys)

  def body(h, per_layer):
    layer_state, key = per_layer
    return block_of(layer_state)(h, mask, key), None

  if remat:
    body = jax.checkpoint(body)
  x, _ = jax.lax.scan(body, x, (state, stacked_keys), length=length)
  return x


def decode(layers, x, cache, index, key_valid):
  """Incremental decoding through every block: cache is one {"k", "v"} of [L, B, S, N, H]
  (stacked) or a list of per-block dicts; returns (x, the updated cache). Stacked, the whole
  cache is the scan's carry and each layer writes its new slots into it in place."""
  if not is_stacked(layers):
    new_cache = []
    for block, layer_cache in zip(layers, cache):
      x, layer_cache = block.decode(x, layer_cache, index, key_valid)
      new_cache.append(layer_cache)
    return x, new_cache
  graphdef, state = nnx.split(layers)

  def body(carry, per_layer):
    h, whole = carry
    layer_state, layer = per_layer
    h, whole = nnx.merge(graphdef, layer_state).decode(h, {**whole, "layer": layer}, index,
                                                       key_valid)
    return (h, {"k": whole["k"], "v": whole["v"]}), None

  (x, cache), _ = jax.lax.scan(body, (x, cache), (state, jnp.arange(cache["k"].shape[0])))
  return x, cache
