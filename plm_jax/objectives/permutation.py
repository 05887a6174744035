"""XLNet's permutation language modelling targets, drawn when a batch is served.

For each segment (Yang et al., 2019, and the reference data pipeline, xlnet/data_utils.py):
- spans to predict are sampled as the reference `_sample_mask` does: a span of n words, n <= 5
  with p(n) ~ 1/n, is placed in a context of n * alpha / beta tokens (alpha = 6, beta = 1:
  about one token in six), until `num_predict` tokens are chosen -- half of them in the
  reused part (the leading `reuse_len` tokens, kept as the next segment's memory), half in the
  rest. Spans cover whole words (the reference meant to; a slip in its loop made them n
  pieces), and one that would overshoot the goal is shortened;
- a factorisation order: one random permutation of each part, the reused part first (the
  reference's `_local_perm` with perm_size = reuse_len). Context tokens (neither chosen nor
  <sep>/<cls>) take rank -1: everyone sees them, they see no chosen token. Chosen tokens come
  after (partial prediction: only the last ~1/K of the order is predicted, K = 6);
- the targets: the chosen tokens that are not <sep>/<cls>, at most num_predict, padded.

Randomness is a numpy Generator seeded by (seed, split, example index, segment): the targets
of an example depend only on its index in the data stream, and a new draw is made each epoch
(dynamic, like RoBERTa's masks).

`perm_mask` turns ranks into the [B, T, T] mask on the device (it is T times larger than the
ranks, so it is never built on the host nor sent).
"""

import dataclasses

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class PermutationConfig:
  seq_len: int
  reuse_len: int
  num_predict: int                   # P: targets per segment (T / K)
  word_starts: np.ndarray            # [vocab] bool: the token starts a word
  functional_ids: np.ndarray         # <sep>, <cls>: never targets, but ordered like them
  max_ngram: int = 5
  alpha: int = 6
  beta: int = 1


def num_predict_for(seq_len: int, k: int) -> int:
  """Targets per segment: the last 1/K of a factorisation order of seq_len tokens."""
  return max(1, int(round(seq_len / k)))


def sample_spans(starts: np.ndarray, goal: int, rng: np.random.Generator, cfg: PermutationConfig
                 ) -> np.ndarray:
  """[L] bool: about `goal` tokens in spans of whole words (starts[i]: token i starts one)."""
  length = len(starts)
  mask = np.zeros(length, bool)
  grams = np.arange(1, cfg.max_ngram + 1)
  p = 1.0 / grams
  p /= p.sum()
  chosen = cur = 0
  while cur < length and chosen < goal:
    n = min(int(rng.choice(grams, p=p)), goal - chosen)
    context = n * cfg.alpha // cfg.beta
    left = int(rng.integers(context))
    begin = cur + left
    while begin < length and not starts[begin]:
      begin += 1
    if begin >= length:
      break
    end, words = begin + 1, 1
    while end < length:
      if starts[end]:
        words += 1
        if words > n:
          break
      end += 1
    if end >= length:
      break
    end = min(end, begin + goal - chosen)
    mask[begin:end] = True
    chosen += end - begin
    cur = end + context - left
  if chosen < goal:            # top up with single tokens, as the reference does
    free = np.flatnonzero(~mask)
    mask[rng.choice(free, size=min(goal - chosen, len(free)), replace=False)] = True
  return mask


def segment_targets(tokens: np.ndarray, rng: np.random.Generator, cfg: PermutationConfig
                    ) -> dict[str, np.ndarray]:
  """One segment's ranks [T], target flags [T] and targets (positions, labels, weights [P])."""
  t, reuse = len(tokens), cfg.reuse_len
  starts = cfg.word_starts[tokens]
  functional = np.isin(tokens, cfg.functional_ids)
  parts = [(0, reuse), (reuse, t)] if reuse > 0 else [(0, t)]
  goals = ([cfg.num_predict - cfg.num_predict // 2, cfg.num_predict // 2] if reuse > 0
           else [cfg.num_predict])
  chosen = np.concatenate([sample_spans(starts[a:b], goal, rng, cfg)
                           for (a, b), goal in zip(parts, goals)])
  ranks = np.concatenate([rng.permutation(b - a) for a, b in parts]).astype(np.int32)
  ordered = chosen | functional
  ranks = np.where(ordered, ranks, -1).astype(np.int32)
  targets = chosen & ~functional
  positions = np.flatnonzero(targets)[:cfg.num_predict]
  p = cfg.num_predict
  out_pos = np.zeros(p, np.int32)
  out_pos[:len(positions)] = positions
  weights = np.zeros(p, np.float32)
  weights[:len(positions)] = 1.0
  return {"perm_ranks": ranks, "perm_targets": targets.astype(np.int32),
          "target_positions": out_pos, "target_labels": tokens[out_pos].astype(np.int32),
          "target_weights": weights}


def permutation_targets(input_ids: np.ndarray, index: np.ndarray, seed: int, split: int,
                        cfg: PermutationConfig) -> dict[str, np.ndarray]:
  """Targets of a batch of examples [B, S, T] (S consecutive segments each)."""
  b, s, _ = input_ids.shape
  rows = [[segment_targets(input_ids[i, j],
                           np.random.default_rng([seed, split, int(index[i]), j]), cfg)
           for j in range(s)] for i in range(b)]
  return {k: np.stack([np.stack([seg[k] for seg in row]) for row in rows]) for k in rows[0][0]}


def perm_mask(ranks, is_target, reuse_len: int):
  """XLNet's perm_mask [B, T, T] (True: token i may not see token j) from ranks [B, T] (-1:
  context) and target flags [B, T]: i sees j when j is context or comes earlier in the order,
  and a target never sees itself. The first `reuse_len` tokens precede the rest as a whole:
  they see nothing of it, it sees all of them."""
  visible_from = jnp.where(is_target, ranks, ranks + 1)
  within = (visible_from[:, :, None] <= ranks[:, None, :]) & (ranks[:, None, :] >= 0)
  if reuse_len <= 0:
    return within
  later = jnp.arange(ranks.shape[1]) >= reuse_len
  same_part = later[:, None] == later[None, :]
  return jnp.where(same_part[None], within, (~later[:, None] & later[None, :])[None])
