"""Compact storage of example arrays in prepared shards (`plm-jax data prepare`).

The builders make int32 arrays; on disk each field takes the smallest integer type that holds
its values (token ids of a 30k vocabulary fit in uint16, segment ids and labels in uint8), and
an attention mask that is ones then zeros on every row is stored as its rows' lengths. That is
about a quarter of the int32 bytes for BERT's examples. Reading gives back exactly the int32
arrays that were built, row by row, through memory-mapped views (nothing is read before a row
is served).
"""

import numpy as np

PREFIX_MASK = "prefix_mask"       # stored: the number of leading ones of each row


def smallest_int_dtype(values: np.ndarray) -> np.dtype:
  """The smallest integer type that holds every value (unsigned when none is negative)."""
  if values.size == 0:
    return np.dtype(np.uint8)
  low, high = int(values.min()), int(values.max())
  kinds = (np.uint8, np.uint16, np.uint32) if low >= 0 else (np.int8, np.int16, np.int32)
  for kind in kinds:
    info = np.iinfo(kind)
    if info.min <= low and high <= info.max:
      return np.dtype(kind)
  return np.dtype(np.int64)


def is_prefix_mask(mask: np.ndarray) -> bool:
  """True when every row (along the last axis) is ones then zeros."""
  lengths = mask.sum(axis=-1, dtype=np.int64)
  return bool(np.array_equal(mask, np.arange(mask.shape[-1]) < lengths[..., None]))


def encode(arrays: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
  """(what to store, how each field was stored) for one shard's int32 arrays."""
  stored, encoding = {}, {}
  for field, values in arrays.items():
    if field == "attention_mask" and is_prefix_mask(values):
      lengths = values.sum(axis=-1, dtype=np.int64)
      stored[field] = lengths.astype(smallest_int_dtype(lengths))
      encoding[field] = {"kind": PREFIX_MASK, "width": int(values.shape[-1]),
                         "dtype": str(values.dtype)}
    else:
      stored[field] = values.astype(smallest_int_dtype(values), copy=False)
      encoding[field] = {"kind": "cast", "dtype": str(values.dtype)}
  return stored, encoding


def decode(stored, how: dict | None):
  """A row view of a stored field giving the arrays that were built (older shards, stored
  in full without an encoding, pass through)."""
  if how is None:
    return stored
  if how["kind"] == PREFIX_MASK:
    return PrefixMask(stored, how["width"], np.dtype(how["dtype"]))
  return Cast(stored, np.dtype(how["dtype"]))


class Cast:
  """Rows of a stored array in the type they were built in."""

  def __init__(self, stored, dtype: np.dtype):
    self.stored, self.dtype = stored, dtype
    self.shape = tuple(stored.shape)

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, i):
    return np.asarray(self.stored[i]).astype(self.dtype)


class PrefixMask:
  """Attention-mask rows rebuilt from their lengths."""

  def __init__(self, lengths, width: int, dtype: np.dtype):
    self.lengths, self.width, self.dtype = lengths, width, dtype
    self.shape = (*lengths.shape, width)

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, i):
    lengths = np.asarray(self.lengths[i])
    return (np.arange(self.width) < lengths[..., None]).astype(self.dtype)
