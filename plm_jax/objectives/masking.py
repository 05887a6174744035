"""BERT's masked-LM corruption, drawn on the host when a batch is served (dynamic masking).

For each sequence, exactly round(15% x #non-special tokens) positions are chosen (at least one,
at most `max_predictions`), as in the original BERT data creation. Of the chosen positions 80%
become [MASK], 10% a random token drawn from the non-special vocabulary, 10% stay unchanged.
Special tokens ([CLS], [SEP], [PAD], ...) are never chosen.

What is chosen (`MaskingConfig.span`): single tokens (BERT, RoBERTa); whole words, every piece of
a word together (BERT's whole-word masking); or ALBERT's n-grams: spans of n whole words,
n <= max_ngram drawn with p(n) proportional to 1/n, shortened when a span would overshoot the
number of predictions (Lan et al., 2019, and ALBERT's create_pretraining_data.py).

The random numbers are a counter-based hash of (seed, stream, example index, position)
(`example_uniforms`): a batch is masked in a few vectorised numpy calls, the mask of an example
depends only on its index in the data stream -- not on the batch it lands in nor on the number
of hosts -- and a resumed run sees the same masks as an uninterrupted one.
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
  span: str = "token"               # "token", "word" (whole words) or "ngram" (ALBERT)
  word_starts: np.ndarray | None = None   # [vocab] bool, for "word" and "ngram"
  max_ngram: int = 3


SPANS = ("token", "word", "ngram")


def max_predictions_for(seq_len: int, mlm_probability: float) -> int:
  """Smallest P that never truncates round(p * n) for n <= seq_len."""
  return max(1, int(np.ceil(seq_len * mlm_probability)))


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
  """splitmix64's finaliser: a bijective, well-mixed hash of uint64 values."""
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def hashed_uniforms(seed: int, stream: int, index: np.ndarray, width: int) -> np.ndarray:
  """[len(index), width] uniforms in [0, 1), a pure function of (seed, stream, index, column)."""
  with np.errstate(over="ignore"):
    key = _mix64(np.uint64(seed) * _GOLDEN + np.uint64(stream) * np.uint64(0xD1B54A32D192ED03))
    row = _mix64(key ^ (np.asarray(index, np.uint64) * np.uint64(0x8CB92BA72F3D8DD7)))
    cells = _mix64(row[:, None] + np.arange(1, width + 1, dtype=np.uint64)[None, :] * _GOLDEN)
  return (cells >> np.uint64(11)).astype(np.float64) * (2.0 ** -53)


def example_uniforms(seed: int, split: int, index: np.ndarray, seq_len: int,
                     max_predictions: int, span_lengths: bool = False) -> dict[str, np.ndarray]:
  """The draws `mask_tokens` needs for examples `index` of a data stream; `span_lengths` adds
  those of n-gram masking (a stream of their own, after every split's three)."""
  out = {"select": hashed_uniforms(seed, 3 * split, index, seq_len),
         "action": hashed_uniforms(seed, 3 * split + 1, index, max_predictions),
         "replace": hashed_uniforms(seed, 3 * split + 2, index, max_predictions)}
  if span_lengths:
    out["length"] = hashed_uniforms(seed, 1_000_003 + split, index, seq_len)
  return out


def rng_uniforms(rng: np.random.Generator, batch: int, seq_len: int,
                 max_predictions: int) -> dict[str, np.ndarray]:
  """The same draws from a numpy Generator (for tests and one-off use)."""
  return {"select": rng.random((batch, seq_len)), "action": rng.random((batch, max_predictions)),
          "replace": rng.random((batch, max_predictions)), "length": rng.random((batch, seq_len))}


def mask_tokens(input_ids: np.ndarray, special: np.ndarray, uniforms: dict[str, np.ndarray],
                cfg: MaskingConfig) -> dict[str, np.ndarray]:
  """Corrupts a [B, T] batch of ids.

  Args:
    input_ids: [B, T] token ids.
    special: [B, T] bool, True where a token may never be chosen (special tokens and padding).
    uniforms: "select" [B, T], "action" [B, P], "replace" [B, P] uniforms in [0, 1)
      (`example_uniforms` or `rng_uniforms`).
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

  if cfg.span == "token":
    # A uniformly random subset of size num per row: sort random keys, specials to the end.
    keys = np.where(special, 2.0, uniforms["select"])
    order = np.argsort(keys, axis=1, kind="stable")[:, :p] if p <= t else np.pad(
        np.argsort(keys, axis=1, kind="stable"), ((0, 0), (0, p - t)))
    valid = np.arange(p)[None, :] < num[:, None]
    positions = np.where(valid, order, 0)
  else:
    positions, valid = _span_positions(input_ids, special, uniforms, num, cfg)

  labels = np.take_along_axis(input_ids, positions, axis=1)
  action = uniforms["action"]
  to_mask = valid & (action < cfg.mask_token_fraction)
  to_random = valid & (action >= cfg.mask_token_fraction) & (
      action < cfg.mask_token_fraction + cfg.random_token_fraction)
  pick = np.minimum((uniforms["replace"] * len(cfg.random_token_ids)).astype(np.int64),
                     len(cfg.random_token_ids) - 1)
  random_ids = cfg.random_token_ids[pick]

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


def ngram_cdf(max_ngram: int) -> np.ndarray:
  """The cumulative distribution of n in 1..max_ngram with p(n) proportional to 1/n."""
  weights = 1.0 / np.arange(1, max_ngram + 1)
  return np.cumsum(weights) / weights.sum()


def ngram_length(u: float, cdf: np.ndarray) -> int:
  """n drawn from `cdf` (ngram_cdf) by a uniform u in [0, 1)."""
  return int(np.searchsorted(cdf, u, side="right")) + 1


def _span_positions(input_ids, special, uniforms, num, cfg: MaskingConfig):
  """Positions [B, P] and valid [B, P] of whole-word or n-gram masking: words (a start piece
  and its continuations) are visited in a random order; each adds itself (or, for n-grams, the
  n words from it, n shortened while the span would overshoot) unless it would overshoot the
  row's number of predictions or overlap a span already chosen."""
  b, t = input_ids.shape
  p = cfg.max_predictions
  positions = np.zeros((b, p), np.int64)
  valid = np.zeros((b, p), bool)
  cdf = ngram_cdf(cfg.max_ngram if cfg.span == "ngram" else 1)
  starts_vocab = cfg.word_starts
  for r in range(b):
    ok = ~special[r]
    starts = ok & (starts_vocab[input_ids[r]] | np.concatenate([[True], ~ok[:-1]]))
    first = np.flatnonzero(starts)                              # each word's first piece
    if len(first) == 0:
      continue
    cuts = np.flatnonzero(starts | ~ok)                         # where a word ends
    after = np.searchsorted(cuts, first, side="right")
    ends = np.where(after < len(cuts), cuts[np.minimum(after, len(cuts) - 1)], t)
    lengths = ends - first
    chosen: list[int] = []
    taken = np.zeros(len(first), bool)
    for w in np.argsort(uniforms["select"][r, first], kind="stable"):
      n = 1 if len(cdf) == 1 else ngram_length(uniforms["length"][r, first[w]], cdf)
      n = min(n, len(first) - w)
      while n > 1 and len(chosen) + int(lengths[w:w + n].sum()) > num[r]:
        n -= 1
      if len(chosen) + int(lengths[w:w + n].sum()) > num[r] or taken[w:w + n].any():
        continue
      taken[w:w + n] = True
      for x in range(w, w + n):
        chosen.extend(range(first[x], ends[x]))
      if len(chosen) == num[r]:
        break
    k = len(chosen)
    positions[r, :k] = chosen
    valid[r, :k] = True
  return positions, valid
