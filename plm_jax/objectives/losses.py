"""Loss statistics as sums and counts.

Every objective reports sums (of cross-entropy, of correct predictions) and counts rather than
means, so that statistics of micro-batches (gradient accumulation) and of eval batches add up
exactly to those of the whole batch: mean = total sum / total count.
"""

import jax
import jax.numpy as jnp
import optax


def classification_stats(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> dict:
  """Weighted cross-entropy sum, number of weighted correct argmaxes, and weight total."""
  logits = logits.astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return {
      "loss_sum": jnp.sum(ce * weights),
      "correct": jnp.sum(correct * weights),
      "count": jnp.sum(weights),
  }


def safe_div(a, b):
  return a / jnp.maximum(b, 1e-9)
