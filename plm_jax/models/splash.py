"""The TPU's splash-attention kernel (Pallas), as `attention_impl="splash"`.

The kernel works on one device's shard: under a mesh it runs inside `shard_map`, with the batch
split as the activations are and the heads split over the tensor axis. Padding and packed rows
both become segment ids (plm_jax.models.layers.AttentionMask.segments). The mesh's devices
decide how it lowers, not the host: for TPUs (real ones, or a TPU topology compiled for ahead of
time on a CPU host) to Mosaic kernels (`tpu_custom_call`s in the compiled program); for devices
that run it off a TPU, in Pallas interpret mode, which is how the tests check it on CPU (slowly:
it is a reference there, not a fast path).
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernels
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks
from jax.sharding import PartitionSpec

from plm_jax.models.partitioning import active, logical_to_spec

BLOCK = 512     # the kernel's tile along the sequence (smaller for shorter sequences)
MIN_BLOCK = 128  # the kernel's tiles are multiples of this


def supports(length: int) -> bool:
  """Whether the kernel takes this sequence length (else attention falls back to XLA)."""
  return length % MIN_BLOCK == 0


def block_size(length: int) -> int:
  """The largest tile <= BLOCK that divides the sequence length (a multiple of 128)."""
  for block in (BLOCK, 256, MIN_BLOCK):
    if length % block == 0:
      return block
  raise ValueError(f"splash attention needs a sequence length divisible by {MIN_BLOCK}, "
                   f"not {length}")


@functools.lru_cache(maxsize=32)
def _kernel(heads: int, length: int, causal: bool, interpret: bool):
  # Built concretely even when first asked for inside a trace (a jit, or plan's residual
  # trace): the cached kernel's mask tables must not hold that trace's tracers.
  with jax.ensure_compile_time_eval():
    return _make_kernel(heads, length, causal, interpret)


def _make_kernel(heads: int, length: int, causal: bool, interpret: bool):
  one = masks.CausalMask((length, length)) if causal else masks.FullMask((length, length))
  b = block_size(length)
  sizes = kernels.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b,
                             block_kv_dkv=b, block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
  return kernels.make_splash_mha(masks.MultiHeadMask([one] * heads), block_sizes=sizes,
                                 head_shards=1, q_seq_shards=1, interpret=interpret)


def interpret_mode(mesh) -> bool:
  """Whether the kernel runs in Pallas interpret mode: only where the step executes off a TPU."""
  if mesh is not None:
    return mesh.devices.flat[0].platform != "tpu"
  return jax.default_backend() != "tpu"


def _local(q, k, v, segments, *, causal: bool, interpret: bool):
  """One shard: [b, T, n, H] tensors, [b, T] segment ids (or None)."""
  _, length, heads, head_dim = q.shape
  kernel = _kernel(heads, length, causal, interpret)
  to_heads_first = lambda x: x.swapaxes(1, 2)   # noqa: E731 - the kernel takes [N, T, H]
  q = to_heads_first(q * jnp.asarray(head_dim ** -0.5, q.dtype))
  k, v = to_heads_first(k), to_heads_first(v)
  if segments is None:
    out = jax.vmap(kernel)(q, k, v)
  else:
    out = jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=kernels.SegmentIds(q=s, kv=s))
                   )(q, k, v, segments)
  return out.swapaxes(1, 2)


def attention(q, k, v, segments: jax.Array | None, *, causal: bool) -> jax.Array:
  """[B, T, N, H] q, k, v -> [B, T, N, H]; tokens attend within equal `segments` ids."""
  rules_mesh = active()
  run = functools.partial(_local, causal=causal,
                          interpret=interpret_mode(rules_mesh and rules_mesh[1]))
  if rules_mesh is None:
    return run(q, k, v, segments)
  rules, mesh = rules_mesh
  qkv_spec = logical_to_spec(("batch", "length", "heads", "kv"), rules)
  qkv_spec = PartitionSpec(qkv_spec[0], None, qkv_spec[2], None)   # whole sequences per shard
  seg_spec = PartitionSpec(qkv_spec[0], None)
  if segments is None:
    fn = jax.shard_map(lambda q, k, v: run(q, k, v, None), mesh=mesh,
                       in_specs=(qkv_spec,) * 3, out_specs=qkv_spec, check_vma=False)
    return fn(q, k, v)
  fn = jax.shard_map(run, mesh=mesh, in_specs=(qkv_spec,) * 3 + (seg_spec,),
                     out_specs=qkv_spec, check_vma=False)
  return fn(q, k, v, segments)
