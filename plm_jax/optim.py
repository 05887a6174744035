"""AdamW with warmup + decay, global-norm clipping, and no decay on biases or LayerNorm."""

import jax
import optax


def make_schedule(o, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to the peak, then linear / cosine decay to end_lr_fraction x peak."""
  peak, warmup = o.learning_rate, min(o.warmup_steps, max(total_steps, 1))
  decay_steps = max(total_steps - warmup, 1)
  end = peak * o.end_lr_fraction
  warm = optax.linear_schedule(0.0, peak, max(warmup, 1))
  if o.schedule == "linear":
    decay = optax.linear_schedule(peak, end, decay_steps)
  elif o.schedule == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=o.end_lr_fraction)
  else:
    decay = optax.constant_schedule(peak)
  if warmup <= 0:
    return decay
  return optax.join_schedules([warm, decay], [warmup])


def decay_mask(params):
  """Weight decay on matrices (kernels, embeddings) only; biases and LayerNorm are vectors."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(o, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  schedule = make_schedule(o, total_steps)
  parts = []
  if o.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(o.clip_norm))
  parts.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                           mask=decay_mask))
  return optax.chain(*parts), schedule
