"""Building blocks shared by every family: embeddings, attention, MLP, LayerNorm, dropout.

Parameters are stored in `param_dtype` and cast to the compute `dtype` when used; reductions
that need the range (LayerNorm statistics, softmax, losses) run in float32.
"""

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx, struct

from plm_jax.models import kernel_choice, splash
from plm_jax.models.partitioning import active, constrain

Initializer = Callable[..., jax.Array]


def normal_init(stddev: float) -> Initializer:
  return jax.nn.initializers.normal(stddev)


class KeyStream:
  """Hands out distinct dropout keys, deterministically in call order.

  Dropout keys are passed in explicitly (from `fold_in(seed, step)` in the train step) instead of
  living in the model state, so the parameters are the model's only state and the step is pure.
  """

  def __init__(self, key: jax.Array | None):
    self._key = key
    self._count = 0

  def next(self) -> jax.Array | None:
    if self._key is None:
      return None
    self._count += 1
    return jax.random.fold_in(self._key, self._count)


def dropout(x: jax.Array, rate: float, keys: KeyStream | None) -> jax.Array:
  """Inverted dropout; the identity when `rate` is 0 or no keys are given (evaluation)."""
  key = keys.next() if keys is not None else None
  if rate <= 0.0 or key is None:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


class Dense(nnx.Module):
  """y = x W + b over the last axis of x; W may have several output axes (e.g. heads x kv)."""

  def __init__(self, in_features: int, out_shape: tuple[int, ...], axes: tuple[str, ...], *,
               init: Initializer, use_bias: bool = True, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype
    self.kernel = nnx.Param(init(rngs.params(), (in_features, *out_shape), param_dtype), axes=axes)
    self.bias = (nnx.Param(jnp.zeros(out_shape, param_dtype), axes=axes[1:])
                 if use_bias else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.kernel[...].astype(self.dtype)
    y = jnp.tensordot(x.astype(self.dtype), kernel, axes=((x.ndim - 1,), (0,)))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class DenseIn(nnx.Module):
  """Output projection that contracts several trailing axes of x (e.g. heads x kv -> embed)."""

  def __init__(self, in_shape: tuple[int, ...], out_features: int, axes: tuple[str, ...], *,
               init: Initializer, use_bias: bool = True, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype
    self.kernel = nnx.Param(init(rngs.params(), (*in_shape, out_features), param_dtype), axes=axes)
    self.bias = (nnx.Param(jnp.zeros((out_features,), param_dtype), axes=axes[-1:])
                 if use_bias else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    n = self.kernel.ndim - 1
    contract = (tuple(range(x.ndim - n, x.ndim)), tuple(range(n)))
    y = jnp.tensordot(x.astype(self.dtype), self.kernel[...].astype(self.dtype), axes=contract)
    return y if self.bias is None else y + self.bias[...].astype(self.dtype)


class LayerNorm(nnx.Module):
  """LayerNorm with float32 statistics; output in the compute dtype."""

  def __init__(self, features: int, *, eps: float, dtype=jnp.float32, param_dtype=jnp.float32):
    self.eps = eps
    self.dtype = dtype
    self.scale = nnx.Param(jnp.ones((features,), param_dtype), axes=("embed",))
    self.bias = nnx.Param(jnp.zeros((features,), param_dtype), axes=("embed",))

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return y.astype(self.dtype)


class Embed(nnx.Module):
  """A lookup table; `attend` reuses it as a tied output projection."""

  def __init__(self, num: int, features: int, axes: tuple[str, str], *, init: Initializer,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype
    self.embedding = nnx.Param(init(rngs.params(), (num, features), param_dtype), axes=axes)

  def __call__(self, ids: jax.Array) -> jax.Array:
    return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

  def attend(self, x: jax.Array) -> jax.Array:
    return jnp.dot(x.astype(self.dtype), self.embedding[...].astype(self.dtype).T)


@struct.dataclass
class AttentionMask:
  """What may attend to what, kept in the form each kernel takes best.

  padding: [B, T] bool, True for real tokens (rows are right-padded). segment_ids: [B, T] int,
  packed sequences attend only within their segment. causal: each position sees only itself and
  earlier positions. A kernel given `causal` alone (GPT rows without padding) runs its causal-only
  variant; padding becomes sequence lengths (cuDNN) or a segment (splash).
  """
  padding: jax.Array | None = None
  segment_ids: jax.Array | None = None
  causal: bool = struct.field(pytree_node=False, default=False)

  def dense(self, with_causal: bool = True) -> jax.Array | None:
    """[B, 1, T, T] boolean mask (True = may attend), or None if nothing is masked."""
    mask = None
    if self.padding is not None:
      mask = self.padding[:, None, None, :]
    if self.segment_ids is not None:
      same = self.segment_ids[:, None, :, None] == self.segment_ids[:, None, None, :]
      mask = same if mask is None else mask & same
    if with_causal and self.causal and mask is not None:
      t = mask.shape[-1]
      mask = mask & jnp.tril(jnp.ones((t, t), bool))[None, None]
    return mask

  def segments(self) -> jax.Array | None:
    """[B, T] int32 ids such that tokens attend only within equal ids: the packed segments, with
    padding as a segment of its own (0); None when every row is one whole sequence."""
    if self.segment_ids is None and self.padding is None:
      return None
    ids = (jnp.ones(self.padding.shape, jnp.int32) if self.segment_ids is None
           else self.segment_ids.astype(jnp.int32) + 1)
    return ids if self.padding is None else jnp.where(self.padding, ids, 0)


def attention(q, k, v, mask: AttentionMask, *, implementation: str | None,
              dropout_rate: float, keys: KeyStream | None) -> jax.Array:
  """Scaled dot-product attention over [B, T, N, H] tensors.

  implementation: the kernel asked for: "xla" (any device), "cudnn" (the fused flash kernel on
  NVIDIA GPUs, through `jax.nn.dot_product_attention`) or "splash" (the Pallas splash-attention
  kernel of TPUs, plm_jax/models/splash.py). Each call runs it where the kernel takes the call
  and XLA otherwise, by the table of plm_jax/models/kernel_choice.py (attention dropout, in no
  fused kernel, takes an explicit softmax path).
  """
  key = keys.next() if (keys is not None and dropout_rate > 0) else None
  call = kernel_choice.AttentionCall(
      length=q.shape[1], head_dim=q.shape[-1], dtype=jnp.dtype(q.dtype).name,
      causal=mask.causal, padding=mask.padding is not None,
      segments=mask.segment_ids is not None, dropout=key is not None)
  kernel = kernel_choice.record(kernel_choice.choose(implementation, call, _hopper())).kernel
  if kernel == "xla-explicit":
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("btnh,bsnh->bnts", q, k).astype(jnp.float32) * scale
    dense = mask.dense()
    if dense is None and mask.causal:
      t = q.shape[1]
      dense = jnp.tril(jnp.ones((t, t), bool))[None, None]
    if dense is not None:
      logits = jnp.where(dense, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(q.dtype)
    probs = dropout(probs, dropout_rate, KeyStream(key))
    return jnp.einsum("bnts,bsnh->btnh", probs, v)
  if kernel == "splash":
    return splash.attention(q, k, v, mask.segments(), causal=mask.causal)
  if kernel == "cudnn":
    # The fused kernel takes padding as sequence lengths (rows are right-padded), and a row
    # without padding runs the cheaper causal-only (or unmasked) variant; never a mask or bias.
    lengths = None
    if mask.padding is not None:
      lengths = mask.padding.sum(-1).astype(jnp.int32)
    return cudnn_attention(q, k, v, mask.causal, lengths)
  return _xla_attention(q, k, v, mask.dense(with_causal=False), mask.causal)


def cudnn_attention(q, k, v, causal: bool, lengths):
  """cuDNN's flash attention with its own mask types only (see kernel_choice's table)."""
  return jax.nn.dot_product_attention(q, k, v, is_causal=causal, query_seq_lengths=lengths,
                                      key_value_seq_lengths=lengths, implementation="cudnn")


def _hopper() -> bool:
  """Whether the devices the step runs on are NVIDIA sm_90 or later (cuDNN's larger heads)."""
  rules_mesh = active()
  device = rules_mesh[1].devices.flat[0] if rules_mesh is not None else jax.devices()[0]
  capability = getattr(device, "compute_capability", None)
  try:
    return capability is not None and float(capability) >= 9.0
  except (TypeError, ValueError):
    return False


@functools.partial(jax.checkpoint, static_argnums=(4,))
def _xla_attention(q, k, v, dense, causal: bool):
  """The XLA kernel materialises [B, N, T, T] float32 scores; rematerialised, they are made
  again in the backward pass instead of being kept for every layer (1.6 GB a layer for GPT-2
  at B=32, T=1024), at the cost of one more q.k product."""
  return jax.nn.dot_product_attention(q, k, v, mask=dense, is_causal=causal,
                                      implementation="xla")


@dataclasses.dataclass(frozen=True)
class BlockConfig:
  """What one transformer block needs to know (a slice of the family's model config)."""
  hidden_size: int
  num_heads: int
  mlp_dim: int
  dropout_rate: float
  attention_dropout_rate: float
  layer_norm_eps: float
  initializer_range: float
  attention_impl: str | None
  dtype: jnp.dtype
  param_dtype: jnp.dtype


class SelfAttention(nnx.Module):
  """Multi-head self-attention: q/k/v projections, attention, output projection."""

  def __init__(self, cfg: BlockConfig, *, out_init: Initializer | None = None, rngs: nnx.Rngs):
    if cfg.hidden_size % cfg.num_heads:
      raise ValueError(f"hidden_size {cfg.hidden_size} is not divisible by num_heads "
                       f"{cfg.num_heads}")
    self.cfg = cfg
    head_dim = cfg.hidden_size // cfg.num_heads
    init = normal_init(cfg.initializer_range)
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
    shape = (cfg.num_heads, head_dim)
    # One fused projection to [3, heads, head_dim] (q, k, v): one matmul instead of three.
    self.qkv = Dense(cfg.hidden_size, (3, *shape), ("embed", "qkv", "heads", "kv"), init=init,
                     **kw)
    self.out = DenseIn(shape, cfg.hidden_size, ("heads", "kv", "embed"),
                       init=out_init or init, **kw)

  def project(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """[B, T, E] -> q, k, v of [B, T, N, H]."""
    qkv = self.qkv(x)
    return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]

  def __call__(self, x: jax.Array, mask: AttentionMask, keys: KeyStream | None) -> jax.Array:
    names = ("batch", "length", "heads", "kv")
    q, k, v = (constrain(t, names) for t in self.project(x))
    y = attention(q, k, v, mask, implementation=self.cfg.attention_impl,
                  dropout_rate=self.cfg.attention_dropout_rate, keys=keys)
    y = constrain(y, names)
    return constrain(self.out(y), ("batch", "length", "act_embed"))

  def decode(self, x: jax.Array, cache: dict, index: jax.Array, key_valid: jax.Array
             ) -> tuple[jax.Array, dict]:
    """Incremental attention: writes the keys/values of the t new tokens into cache slots
    [index, index + t) and attends over the cache.

    cache: {"k", "v"} of [B, S, N, H], or of every layer's [L, B, S, N, H] with "layer" the
    index of this one (stacked layers: the new slots are written in place into the whole
    cache, never a copy of it); key_valid: [B, S] bool, the slots that hold real tokens (new
    ones included). A query in slot index + i sees valid slots <= index + i.
    """
    q, k, v = self.project(x)
    layer = cache.get("layer")
    if layer is None:
      start = (0, index, 0, 0)
      cache = {"k": jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), start),
               "v": jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), start)}
      keys, values = cache["k"], cache["v"]
    else:
      start = (layer, 0, index, 0, 0)
      cache = {"k": jax.lax.dynamic_update_slice(cache["k"], k[None].astype(cache["k"].dtype),
                                                 start),
               "v": jax.lax.dynamic_update_slice(cache["v"], v[None].astype(cache["v"].dtype),
                                                 start),
               "layer": layer}
      keys = jax.lax.dynamic_index_in_dim(cache["k"], layer, keepdims=False)
      values = jax.lax.dynamic_index_in_dim(cache["v"], layer, keepdims=False)
    t, length = x.shape[1], keys.shape[1]
    query_slot = index + jnp.arange(t)
    causal = jnp.arange(length)[None, :] <= query_slot[:, None]                 # [t, S]
    mask = causal[None, None] & key_valid[:, None, None, :]                       # [B, 1, t, S]
    y = jax.nn.dot_product_attention(q, keys.astype(q.dtype), values.astype(q.dtype), mask=mask)
    return self.out(y), cache


class MLP(nnx.Module):
  """Position-wise feed-forward: Dense -> GELU -> Dense."""

  def __init__(self, cfg: BlockConfig, *, approximate_gelu: bool,
               out_init: Initializer | None = None, rngs: nnx.Rngs):
    init = normal_init(cfg.initializer_range)
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
    self.approximate_gelu = approximate_gelu
    self.wi = Dense(cfg.hidden_size, (cfg.mlp_dim,), ("embed", "mlp"), init=init, **kw)
    self.wo = DenseIn((cfg.mlp_dim,), cfg.hidden_size, ("mlp", "embed"),
                      init=out_init or init, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = jax.nn.gelu(self.wi(x), approximate=self.approximate_gelu)
    h = constrain(h, ("batch", "length", "mlp"))
    return constrain(self.wo(h), ("batch", "length", "act_embed"))
