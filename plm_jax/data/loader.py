"""Pretraining data: corpus -> tokenizer -> examples -> deterministic, resumable global batches.

`PretrainingData.batch(step)` is a pure function of (seed, step): the examples of an epoch are a
seeded permutation, and BERT's masks are drawn when the batch is served from an rng seeded by
(seed, step). A resumed run therefore sees exactly the batches an uninterrupted run would, and the
loader's "position" is just the step stored in the checkpoint. Each process builds the rows of
the global batch it owns and `to_global` assembles them into sharded `jax.Array`s.
"""

import dataclasses
import math
import os

import jax
import numpy as np

from plm_jax.data.corpus import load_documents, split_train_eval
from plm_jax.data.examples import bert_examples, gpt_examples
from plm_jax.data.tokenizer import TextTokenizer, train_tokenizer
from plm_jax.errors import DataError
from plm_jax.objectives.masking import MaskingConfig, mask_tokens, max_predictions_for

_TRAIN, _EVAL = 0, 1


def tokenize_documents(tokenizer: TextTokenizer, documents, by_sentence: bool):
  """[[sentence]] -> [[ids per sentence]] (BERT) or [ids per document] (GPT)."""
  if by_sentence:
    flat = [s for d in documents for s in d]
    ids = tokenizer.encode_batch(flat)
    out, k = [], 0
    for d in documents:
      out.append([s for s in ids[k:k + len(d)] if s])
      k += len(d)
    return out
  return tokenizer.encode_batch([" ".join(d) for d in documents])


@dataclasses.dataclass
class PretrainingData:
  """Examples of one split and the recipe to serve them as batches."""

  examples: dict[str, np.ndarray]
  objective: str
  batch_size: int                        # global batch (rows per step, all processes)
  seed: int
  split: int
  masking: MaskingConfig | None = None
  special_ids: np.ndarray | None = None

  @property
  def num_examples(self) -> int:
    return len(self.examples["input_ids"])

  @property
  def steps_per_epoch(self) -> int:
    return max(1, self.num_examples // self.batch_size)

  def _rows(self, step: int) -> np.ndarray:
    """Indices of the examples of global batch `step` (epochs reshuffled, remainder dropped)."""
    if self.num_examples >= self.batch_size:
      epoch, within = divmod(step, self.steps_per_epoch)
      order = np.random.default_rng([self.seed, self.split, epoch]).permutation(self.num_examples)
      return order[within * self.batch_size:(within + 1) * self.batch_size]
    # Fewer examples than one batch (a tiny eval split): cycle through them in order.
    return np.arange(step * self.batch_size, (step + 1) * self.batch_size) % self.num_examples

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """The whole global batch of `step` as numpy arrays."""
    rows = self._rows(step)
    batch = {k: v[rows] for k, v in self.examples.items()}
    if self.masking is not None:
      special = np.isin(batch["input_ids"], self.special_ids) | (batch["attention_mask"] == 0)
      rng = np.random.default_rng([self.seed, self.split, 1_000_003, step])
      batch.update(mask_tokens(batch["input_ids"], special, rng, self.masking))
    return batch

  def local_batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of the global batch of `step`."""
    return local_rows(self.batch(step))


def local_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """This process's rows of a global batch (contiguous, in process order)."""
  n, i = jax.process_count(), jax.process_index()
  per = len(batch["input_ids"]) // n
  return {k: v[i * per:(i + 1) * per] for k, v in batch.items()}


def to_global(local: dict[str, np.ndarray], shardings: dict) -> dict[str, jax.Array]:
  """Process-local rows -> global sharded arrays (no host ever holds the whole batch on device)."""
  return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in local.items()}


def build_tokenizer(config, documents) -> TextTokenizer:
  """The tokenizer named by data.tokenizer, or a new one trained on `documents`."""
  if config.data.tokenizer:
    path = config.data.tokenizer
    directory = path if os.path.isdir(path) else os.path.dirname(path) or "."
    if not os.path.isdir(path) and os.path.basename(path) != "tokenizer.json":
      raise DataError(f"data.tokenizer={path!r} must be a tokenizer.json file or a directory "
                      "holding one")
    return TextTokenizer.load(directory)
  kind = "wordpiece" if config.model.family == "bert" else "bpe"
  texts = (s for d in documents for s in d)
  return train_tokenizer(texts, kind, config.data.vocab_size, lowercase=config.data.lowercase)


def build_datasets(config, tokenizer: TextTokenizer | None = None, documents=None,
                   eval_only: bool = False,
                   ) -> tuple[TextTokenizer, PretrainingData | None, PretrainingData]:
  """(tokenizer, train data, eval data) for `config`; trains the tokenizer if none is given.

  With `eval_only` the train split is not built (evaluation of a restored checkpoint).
  """
  if documents is None:
    documents = load_documents(config.data)
  train_docs, eval_docs = split_train_eval(documents, config.data.eval_fraction)
  if tokenizer is None:
    tokenizer = build_tokenizer(config, train_docs)
  seq = config.data.max_seq_length
  out = [None] if eval_only else []
  for split, docs in ((_TRAIN, train_docs), (_EVAL, eval_docs)):
    if eval_only and split == _TRAIN:
      continue
    rng = np.random.default_rng([config.train.seed, split, 7])
    if config.objective.name == "mlm_nsp":
      examples = bert_examples(
          tokenize_documents(tokenizer, docs, by_sentence=True), max_seq_length=seq,
          short_seq_prob=config.data.short_seq_prob, dupe_factor=config.data.dupe_factor,
          cls_id=tokenizer.cls_id, sep_id=tokenizer.sep_id, pad_id=tokenizer.pad_id, rng=rng)
      masking = MaskingConfig(
          mask_id=tokenizer.mask_id, random_token_ids=tokenizer.regular_ids(),
          max_predictions=max_predictions_for(seq, config.objective.mlm_probability),
          mlm_probability=config.objective.mlm_probability)
    else:
      examples = gpt_examples(tokenize_documents(tokenizer, docs, by_sentence=False),
                              max_seq_length=seq, eos_id=tokenizer.eos_id)
      masking = None
    if len(examples["input_ids"]) == 0:
      raise DataError(
          f"the {'train' if split == _TRAIN else 'eval'} split of data.source="
          f"{config.data.source!r} yields no examples of max_seq_length={seq}; use a larger "
          "corpus or a smaller --config.data.max_seq_length")
    out.append(PretrainingData(examples, config.objective.name, config.train.batch_size,
                               config.train.seed, split, masking, tokenizer.special_ids()))
  return tokenizer, out[0], out[1]


def batch_shapes(config) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """Shape and dtype of every field of a global batch (for synthetic batches and shardings)."""
  b, t = config.train.batch_size, config.data.max_seq_length
  if config.objective.name == "mlm_nsp":
    p = max_predictions_for(t, config.objective.mlm_probability)
    return {"input_ids": ((b, t), np.int32), "segment_ids": ((b, t), np.int32),
            "attention_mask": ((b, t), np.int32), "masked_positions": ((b, p), np.int32),
            "masked_labels": ((b, p), np.int32), "masked_weights": ((b, p), np.float32),
            "nsp_labels": ((b,), np.int32)}
  return {"input_ids": ((b, t), np.int32), "attention_mask": ((b, t), np.int32),
          "labels": ((b, t), np.int32), "label_weights": ((b, t), np.float32)}


def synthetic_batch(config, vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Random ids of the right shapes (bench): full-length sequences, 15% positions predicted."""
  rng = np.random.default_rng(seed)
  out = {}
  for name, (shape, dtype) in batch_shapes(config).items():
    if name in ("input_ids", "labels", "masked_labels"):
      out[name] = rng.integers(5, vocab_size, shape).astype(dtype)
    elif name in ("attention_mask", "masked_weights", "label_weights"):
      out[name] = np.ones(shape, dtype)
    elif name == "segment_ids":
      out[name] = (np.arange(shape[1])[None, :] >= shape[1] // 2).astype(dtype).repeat(shape[0], 0)
    elif name == "masked_positions":
      out[name] = np.sort(rng.permuted(np.tile(np.arange(1, config.data.max_seq_length),
                                               (shape[0], 1)), axis=1)[:, :shape[1]], axis=1)
      out[name] = out[name].astype(dtype)
    elif name == "nsp_labels":
      out[name] = rng.integers(0, 2, shape).astype(dtype)
  return out


def tokens_in(batch: dict[str, np.ndarray]) -> int:
  """Real (non-padding) tokens in a batch: what "tokens seen" counts."""
  return int(np.sum(batch["attention_mask"]))


def eval_steps_for(data: PretrainingData, requested: int) -> int:
  """Eval batches that cover the eval split once, capped at `requested` (0 = no cap)."""
  full = math.ceil(data.num_examples / data.batch_size)
  return full if requested <= 0 else min(full, requested)
