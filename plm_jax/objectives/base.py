"""What every objective tells the rest of a run, with the defaults most take: the data builder
its examples come from, the batch it is fed, the head the model grows for it, the segments and
predictions of a row. plm_jax/objectives/objectives.py holds the objectives and their table."""

import numpy as np


class Objective:
  name: str
  builder: str                    # the data builder (data/pipeline.py) its examples come from
  head: str | None = None         # a fine-tuned head beside the pretrained body ("classifier")
  rows = False                    # served as whole labelled rows, with example weights
  permuted = False                # XLNet's segments, factorisation orders and targets
  completions_only = False        # a causal LM loss on the completion tokens only
  documents_from = 0              # the first segment id of a synthetic row (packed: 1)

  @classmethod
  def for_config(cls, config) -> "Objective":
    """This objective set up as `config` says."""
    return cls()

  def model_fields(self, config) -> dict:
    """The ModelConfig fields of its head (num_labels, token_labels, span_head, nsp_head)."""
    return {}

  def segments(self, config) -> int:
    """Sequences of max_seq_length in one example (XLNet: a chain of segments)."""
    return 1

  def predictions(self, config) -> int:
    """Positions predicted in a sequence (the width of an encoder's targets); 0: every one."""
    return 0

  def batch_shapes(self, config) -> dict:
    """Shape and dtype of every field of a global batch."""
    raise NotImplementedError


def rows_of(config) -> dict:
  """The fields every labelled row holds: a tokenised pair, its weight and its index."""
  b, t = config.train.batch_size, config.data.max_seq_length
  return {"input_ids": ((b, t), np.int32), "segment_ids": ((b, t), np.int32),
          "attention_mask": ((b, t), np.int32), "example_weights": ((b,), np.float32),
          "example_index": ((b,), np.int32)}
