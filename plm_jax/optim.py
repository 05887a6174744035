"""AdamW (or LAMB, ALBERT's: no trust ratio on biases or LayerNorm) with warmup + decay, global-norm clipping, and no decay on biases or LayerNorm; for
fine-tuning, layer-wise learning-rate decay and a learning rate of the head's own."""

import jax
import jax.numpy as jnp
import numpy as np
import optax


def make_schedule(o, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to the peak, then linear / cosine decay to end_lr_fraction x peak
  over the steps after the warmup; or "linear_total", the original BERT code's: the warmup
  rate peak x step / w, and after it the linear decay counted over all T steps from step 0, so
  the rate at the end of the warmup is peak x (1 - w / T)."""
  peak, warmup = o.learning_rate, min(o.warmup_steps, max(total_steps, 1))
  if o.schedule == "linear_total":
    return _linear_total_schedule(peak, peak * o.end_lr_fraction, warmup, max(total_steps, 1))
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


def _linear_total_schedule(peak: float, end: float, warmup: int, total: int) -> optax.Schedule:
  """google-research/bert optimization.py: polynomial_decay(power=1) over all steps, replaced
  by peak x step / warmup while step < warmup."""
  decay = optax.linear_schedule(peak, end, total)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak * step / max(warmup, 1)
    return jnp.where(step < warmup, warm, decay(step))

  return schedule


# The parameters weight decay applies to: the matrices (Dense / DenseIn kernels, embedding
# tables). Decided by name, not by rank: stacked layers (model.scan_layers) give biases and
# LayerNorm a leading layers axis, and the fused q/k/v bias is [3, heads, head_dim].
DECAYED = ("kernel", "embedding")


def decay_mask(params):
  """Weight decay on matrices (kernels, embeddings) only, never on biases or LayerNorm."""
  def decayed(path, _):
    last = path[-1] if path else None
    return str(getattr(last, "key", getattr(last, "name", last))) in DECAYED
  return jax.tree_util.tree_map_with_path(decayed, params)


def lamb(learning_rate, b1: float, b2: float, eps: float, weight_decay: float, mask
         ) -> optax.GradientTransformation:
  """LAMB as ALBERT's lamb_optimizer.py runs it: the Adam direction plus decoupled weight decay
  on the matrices, rescaled by the trust ratio ||w|| / ||direction|| on the matrices only
  (`exclude_from_layer_adaptation` defaults to the weight-decay exclusions: biases and
  LayerNorm; optax.lamb rescales every parameter)."""
  return optax.chain(optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
                     optax.add_decayed_weights(weight_decay, mask),
                     optax.masked(optax.scale_by_trust_ratio(), mask),
                     optax.scale_by_learning_rate(learning_rate))


def lr_factors(params, depth, num_layers: int, layer_decay: float, head_factor: float):
  """Per-parameter multipliers of the learning rate: layer_decay^(L + 1 - depth) for the body
  (ELECTRA / BEiT-style layer-wise decay: the embeddings change least), head_factor for the
  new head. `depth(path)` is the family's layer grouping (plm_jax.families.Family.layer_depth):
  0 for embeddings, l + 1 for layer l, L + 1 above, None for the head. A tree of Python floats
  shaped like `params`; a stacked layers parameter gets an array, one factor per layer along
  its leading axis."""
  def factor(path, leaf):
    d = depth(tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path))
    if d is None:
      return head_factor
    if isinstance(d, tuple):                     # stacked layers: [L, 1, ..., 1]
      per_layer = np.asarray([layer_decay ** (num_layers + 1 - x) for x in d], np.float32)
      return per_layer.reshape((len(d),) + (1,) * (len(leaf.shape) - 1))
    return layer_decay ** (num_layers + 1 - d)
  return jax.tree_util.tree_map_with_path(factor, params)


def scale_by_factors(factors) -> optax.GradientTransformation:
  """Multiplies each parameter's update by its (static) factor."""
  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, f: u if isinstance(f, float) and f == 1.0 else u * f,
                        updates, factors), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def make_optimizer(o, total_steps: int, factors=None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """`factors` (see lr_factors) scale each parameter's learning rate, weight decay included."""
  schedule = make_schedule(o, total_steps)
  parts = []
  if o.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(o.clip_norm))
  make = lamb if o.get("optimizer", "adamw") == "lamb" else optax.adamw
  parts.append(make(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                    mask=decay_mask))
  if factors is not None:
    parts.append(scale_by_factors(factors))
  return optax.chain(*parts), schedule
