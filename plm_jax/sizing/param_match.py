"""Sizing a pretraining config's body to a parameter count (for comparing the families at
matched parameters).

Only the width moves: hidden_size, in multiples of num_heads, with mlp_dim kept at the config's
ratio to it; depth, heads, vocabulary and ALBERT's embedding size stay the config's. For a fixed
depth, vocabulary and ratio the count is a quadratic in the width (up to mlp_dim's rounding) and
grows with it, so `match_width` fits that quadratic through three exact counts, solves it, and
settles the answer by counting the widths around the solution.
"""

import math
from fractions import Fraction

import jax
import numpy as np

from plm_jax.errors import ConfigError
from plm_jax.models.config import padded_vocab
from plm_jax.trainer import AbstractState


def count_params(config) -> int:
  """Trainable parameters of a pretraining config, as `plan` and `compare` count them: with
  the configured vocabulary, padded."""
  vocab = padded_vocab(config, config.data.vocab_size)
  abstract = AbstractState.of(config, vocab)
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.state["params"]))


def with_width(config, hidden: int):
  """A copy of `config` with model.hidden_size = `hidden` and mlp_dim at the same ratio to it
  (rounded half up); every other field unchanged: heads keep their number (a head's size,
  hidden_size / num_heads, is derived, XLNet's too), ALBERT's embedding_size its value."""
  m = config.model
  if hidden <= 0 or hidden % m.num_heads:
    nearest = max(1, round(hidden / m.num_heads)) * m.num_heads
    raise ConfigError(f"hidden size {hidden} is not a positive multiple of model.num_heads="
                      f"{m.num_heads}; choose one, e.g. {nearest}")
  out = config.copy_and_resolve_references()
  out.model.hidden_size = hidden
  # half up in integers: the same mlp_dim for the same width whatever the ratio's float error
  out.model.mlp_dim = max(1, (2 * hidden * m.mlp_dim + m.hidden_size) // (2 * m.hidden_size))
  return out


def match_width(config, target_params: int) -> tuple[int, int]:
  """(hidden, params): the width, a multiple of model.num_heads, whose count_params is nearest
  `target_params` (on a tie the smaller), and its count."""
  heads = config.model.num_heads
  counts: dict[int, int] = {}

  def count(k: int) -> int:           # k heads' worth of width; each width counted once
    if k not in counts:
      counts[k] = count_params(with_width(config, k * heads))
    return counts[k]

  if target_params < count(1):
    m = config.model
    raise ConfigError(
        f"no width of {m.family} size {m.size} ({m.num_layers} layers, {heads} heads) has as "
        f"few as {target_params:,} parameters: the smallest (hidden {heads}) has {count(1):,}; "
        f"raise the target, or choose a size with fewer layers or heads")
  preset = max(1, config.model.hidden_size // heads)
  lo = _bracket(count, target_params, _solve(count, target_params, (1, preset, 2 * preset)))
  below, above = target_params - count(lo), count(lo + 1) - target_params
  k = lo if below <= above else lo + 1
  return k * heads, count(k)


def _solve(count, target: int, ks: tuple[int, int, int]) -> int:
  """The k >= 1 where the quadratic through (k, count(k)) at `ks` reaches `target`, rounded
  down: an estimate (mlp_dim's rounding keeps the count off a quadratic by a little)."""
  k1, k2, k3 = ks if len(set(ks)) == 3 else (1, 2, 3)    # a preset one head's width wide
  p1, p2, p3 = (Fraction(count(k)) for k in (k1, k2, k3))
  # Newton's divided differences: exact in fractions
  d12, d23 = (p2 - p1) / (k2 - k1), (p3 - p2) / (k3 - k2)
  a = (d23 - d12) / (k3 - k1)
  b = d12 - a * (k1 + k2)
  c = p1 - a * k1 * k1 - b * k1 - target
  if a == 0:
    root = -c / b if b else 1
  else:
    root = (-b + math.sqrt(max(0.0, float(b * b - 4 * a * c)))) / (2 * a)
  return max(1, math.floor(root))


def _bracket(count, target: int, guess: int) -> int:
  """The largest k >= 1 with count(k) <= target (count(1) <= target, count increasing), from a
  guess: steps of doubling size away from it, then bisection; two counts when it is right."""
  lo, hi, step = guess, guess + 1, 1
  while count(lo) > target:            # the guess is too wide: walk down
    hi, lo, step = lo, max(1, lo - step), 2 * step
  while count(hi) <= target:           # too narrow: walk up
    lo, hi, step = hi, hi + step, 2 * step
  while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if count(mid) <= target else (lo, mid)
  return lo
