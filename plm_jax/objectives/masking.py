"""BERT's masked-LM corruption, drawn on the host when a batch is served (dynamic masking).

For each sequence, exactly round(15% x #non-special tokens) positions are chosen (at least one,
at most `max_predictions`), as in the original BERT data creation. Of the chosen positions 80%
become [MASK], 10% a random token drawn from the non-special vocabulary, 10% stay unchanged.
Special tokens ([CLS], [SEP], [PAD], ...) are never chosen. The rng is a numpy Generator seeded
from (seed, step), so a run -- and a resumed run -- sees the same masks.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class MaskingConfig:
  mask_id: int
  random_token_ids: np.ndarray      # ids a "random token" may be drawn from (no specials)
  max_predictions: int              # P: width of the masked_positions arrays
  mlm_probability: float = 0.15
  mask_token_fraction: float = 0.8
  random_token_fraction: float = 0.1


def max_predictions_for(seq_len: int, mlm_probability: float) -> int:
  """Smallest P that never truncates round(p * n) for n <= seq_len."""
  return max(1, int(np.ceil(seq_len * mlm_probability)))


def mask_tokens(input_ids: np.ndarray, special: np.ndarray, rng: np.random.Generator,
                cfg: MaskingConfig) -> dict[str, np.ndarray]:
  """Corrupts a [B, T] batch of ids.

  Args:
    input_ids: [B, T] token ids.
    special: [B, T] bool, True where a token may never be chosen (special tokens and padding).
    rng: the generator the choices are drawn from.
    cfg: mask id, random-token vocabulary and rates.
  Returns:
    input_ids (corrupted copy), masked_positions [B, P] int32, masked_labels [B, P] int32
    (the original ids) and masked_weights [B, P] float32 (1 for real predictions, 0 for padding).
  """
  b, t = input_ids.shape
  p = cfg.max_predictions
  candidates = (~special).sum(axis=1)
  num = np.minimum(p, np.maximum(1, np.rint(candidates * cfg.mlm_probability))).astype(np.int64)
  num = np.minimum(num, candidates)      # a sequence without candidates predicts nothing

  # A uniformly random subset of size num per row: sort random keys, specials pushed to the end.
  keys = rng.random((b, t))
  keys[special] = 2.0
  order = np.argsort(keys, axis=1, kind="stable")[:, :p] if p <= t else np.pad(
      np.argsort(keys, axis=1, kind="stable"), ((0, 0), (0, p - t)))
  valid = np.arange(p)[None, :] < num[:, None]
  positions = np.where(valid, order, 0)

  labels = np.take_along_axis(input_ids, positions, axis=1)
  action = rng.random((b, p))
  to_mask = valid & (action < cfg.mask_token_fraction)
  to_random = valid & (action >= cfg.mask_token_fraction) & (
      action < cfg.mask_token_fraction + cfg.random_token_fraction)
  random_ids = rng.choice(cfg.random_token_ids, size=(b, p))

  corrupted = input_ids.copy()
  rows = np.broadcast_to(np.arange(b)[:, None], (b, p))
  new_values = np.where(to_mask, cfg.mask_id, np.where(to_random, random_ids, labels))
  corrupted[rows[valid], positions[valid]] = new_values[valid]
  return {
      "input_ids": corrupted.astype(np.int32),
      "masked_positions": positions.astype(np.int32),
      "masked_labels": np.where(valid, labels, 0).astype(np.int32),
      "masked_weights": valid.astype(np.float32),
  }
