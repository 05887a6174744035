"""The output layer and its softmax cross-entropy, in chunks, without a [B, T, V] float32 tensor.

The plain form, `logits = h @ table.T + bias` then cross-entropy, keeps the whole [B, T, V]
logits (and their float32 softmax, and the scatter of the label gradient into a zeroed float32
[B, T, V]) alive between the forward and backward passes: for GPT-2 124M at B=32, T=1024 that
is 6.6 GB per tensor. Here the rows are cut into chunks along the sequence; each chunk's logits
are made in the compute dtype, reduced in float32 to a log-sum-exp and thrown away. The backward
pass (a custom VJP) recomputes one chunk's logits at a time, forms softmax - one_hot in the
compute dtype (the one-hot is a comparison with an iota, fused: no scatter), and accumulates the
table's gradient in float32. What is kept between the passes is [B, T] float32, not [B, T, V].

`output_stats` returns the same statistics as `losses.classification_stats` of the plain form.
"""

import functools

import jax
import jax.numpy as jnp

from plm_jax.models.partitioning import active, constrain


def chunk_length(rows: int, length: int, chunk_tokens: int) -> int:
  """Positions per chunk: the largest divisor of `length` whose chunk (rows x positions) holds
  at most `chunk_tokens` tokens (at least one position); `length` itself when chunking is off."""
  if chunk_tokens <= 0:
    return length
  best = 1
  for c in range(1, length + 1):
    if length % c == 0 and rows * c <= chunk_tokens:
      best = c
  return best


def local_rows(rows: int) -> int:
  """Rows of the batch on one device (the batch is split over the mesh's batch axes)."""
  rules_mesh = active()
  if rules_mesh is None:
    return rows
  rules, mesh = rules_mesh
  axes = rules.get("batch") or ()
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  shards = 1
  for axis in axes:
    shards *= mesh.shape[axis]
  return max(1, rows // shards)


def _chunks(x, c):
  """[B, T, ...] -> [T / c, B, c, ...]: the scan runs over the first axis."""
  b, t = x.shape[:2]
  return x.reshape(b, t // c, c, *x.shape[2:]).swapaxes(0, 1)


def _unchunk(x):
  n, b, c = x.shape[:3]
  return x.swapaxes(0, 1).reshape(b, n * c, *x.shape[3:])


def _logits(h, table, bias):
  """One chunk's logits [B, c, V] in the compute dtype of h (`table` already in it)."""
  logits = jnp.einsum("bcd,vd->bcv", h, table)
  if bias is not None:
    logits = logits + bias.astype(h.dtype)
  return constrain(logits, ("batch", "length", "vocab"))


def _forward_chunk(h, table, bias, labels):
  logits = _logits(h, table, bias)
  logits32 = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits32, axis=-1)
  vocab = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 2)
  label_logit = jnp.sum(jnp.where(vocab == labels[..., None], logits32, 0.0), axis=-1)
  correct = jnp.argmax(logits, axis=-1) == labels
  return lse, lse - label_logit, correct


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _ce(hidden, table, bias, labels, weights, c):
  return _ce_fwd(hidden, table, bias, labels, weights, c)[0]


def _ce_fwd(hidden, table, bias, labels, weights, c):
  table_c = table.astype(hidden.dtype)

  def body(_, xs):
    h, y = xs
    return None, _forward_chunk(h, table_c, bias, y)

  _, (lse, ce, correct) = jax.lax.scan(body, None, (_chunks(hidden, c), _chunks(labels, c)))
  lse, ce, correct = _unchunk(lse), _unchunk(ce), _unchunk(correct)
  out = (jnp.sum(ce * weights), jnp.sum(correct.astype(jnp.float32) * weights))
  return out, (hidden, table, bias, labels, weights, lse)


def _ce_bwd(c, residuals, cotangents):
  hidden, table, bias, labels, weights, lse = residuals
  g_loss = cotangents[0]                        # the accuracy count has no gradient
  scale = (weights * g_loss).astype(jnp.float32)
  table_c = table.astype(hidden.dtype)

  def body(acc, xs):
    d_table, d_bias = acc
    h, y, row_lse, row_scale = xs
    logits = _logits(h, table_c, bias)
    probs = jnp.exp(logits.astype(jnp.float32) - row_lse[..., None])
    vocab = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 2)
    d_logits = ((probs - (vocab == y[..., None])) * row_scale[..., None]).astype(h.dtype)
    d_h = jnp.einsum("bcv,vd->bcd", d_logits, table_c)
    # The float32 accumulator is sharded like the table (vocab x embed), not replicated.
    d_table = constrain(d_table + jnp.einsum("bcv,bcd->vd", d_logits, h,
                                             preferred_element_type=jnp.float32),
                        ("vocab", "embed"))
    if d_bias is not None:
      d_bias = d_bias + jnp.sum(d_logits.astype(jnp.float32), axis=(0, 1))
    return (d_table, d_bias), d_h

  zeros = (constrain(jnp.zeros(table.shape, jnp.float32), ("vocab", "embed")),
           None if bias is None else jnp.zeros(bias.shape, jnp.float32))
  (d_table, d_bias), d_hidden = jax.lax.scan(
      body, zeros, (_chunks(hidden, c), _chunks(labels, c), _chunks(lse, c), _chunks(scale, c)))
  return (_unchunk(d_hidden).astype(hidden.dtype), d_table.astype(table.dtype),
          None if bias is None else d_bias.astype(bias.dtype), None, None)


_ce.defvjp(_ce_fwd, _ce_bwd)


def output_stats(hidden: jax.Array, table: jax.Array, bias: jax.Array | None,
                 labels: jax.Array, weights: jax.Array, *, chunk_tokens: int) -> dict:
  """Cross-entropy statistics of the output layer `hidden @ table.T + bias`.

  hidden: [B, T, D] in the compute dtype; table: [V, D] (the tied word embeddings, logical axes
  vocab x embed); bias: [V]
  or None; labels: [B, T] int; weights: [B, T]. chunk_tokens: tokens per device in one chunk
  (<= 0: one chunk). Returns {"loss_sum", "correct", "count"} as classification_stats does.
  """
  weights = weights.astype(jnp.float32)
  c = chunk_length(local_rows(hidden.shape[0]), hidden.shape[1], chunk_tokens)
  loss_sum, correct = _ce(hidden, table, bias, labels.astype(jnp.int32), weights, c)
  return {"loss_sum": loss_sum, "correct": correct, "count": jnp.sum(weights)}
