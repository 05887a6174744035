"""Extractive question answering: cross-entropy of the answer's start and of its end token.

As BERT's SQuAD fine-tuning: the loss of a window is the mean of the start and the end
cross-entropy over its positions; a window that does not hold the answer (and an unanswerable
question) points both at the null position, the [CLS] token (XLNet's <cls>, last). Padding
positions are left out of the softmax: they can never be an answer.
"""

import jax.numpy as jnp

import numpy as np

from plm_jax.objectives.base import Objective, rows_of
from plm_jax.objectives.losses import classification_stats, safe_div

# Added to the logits of padding positions in the loss (finite: no NaN from -inf - -inf).
PADDING_LOGIT = -1e9


class SpanExtraction(Objective):
  """Start / end cross-entropy. `example_weights` is 0 for the rows that only pad the last eval
  batch; `span_accuracy`: windows whose start and end are both right."""

  name = "qa"
  builder = "classify"          # QA windows are served as classification rows are
  head = "question-answering model"
  rows = True
  train_keys = ("loss", "span_accuracy", "learning_rate")
  eval_keys = ("exact_match", "f1", "HasAns_exact_match", "HasAns_f1", "NoAns_exact_match",
               "best_f1", "best_f1_thresh", "total")

  def model_fields(self, config) -> dict:
    return {"span_head": True}

  def batch_shapes(self, config) -> dict:
    b = config.train.batch_size             # a window's answer span
    return {**rows_of(config), "start_positions": ((b,), np.int32),
            "end_positions": ((b,), np.int32)}

  def stats(self, model, batch: dict, dropout_rng=None) -> dict:
    out = model(batch["input_ids"], batch["segment_ids"], batch["attention_mask"],
                dropout_rng=dropout_rng)
    weights = batch["example_weights"]
    padding = jnp.where(batch["attention_mask"] > 0, 0.0, PADDING_LOGIT)
    start = classification_stats(out["start_logits"] + padding, batch["start_positions"],
                                 weights)
    end = classification_stats(out["end_logits"] + padding, batch["end_positions"], weights)
    both = ((jnp.argmax(out["start_logits"] + padding, -1) == batch["start_positions"])
            & (jnp.argmax(out["end_logits"] + padding, -1) == batch["end_positions"]))
    return {"qa_loss_sum": (start["loss_sum"] + end["loss_sum"]) / 2,
            "qa_correct": jnp.sum(both.astype(jnp.float32) * weights),
            "qa_count": start["count"]}

  def totals(self, batch: dict) -> dict:
    return {"qa_count": jnp.sum(batch["example_weights"])}

  def loss(self, stats: dict, totals: dict):
    return safe_div(stats["qa_loss_sum"], totals["qa_count"])

  def metrics(self, stats: dict) -> dict:
    return {"loss": safe_div(stats["qa_loss_sum"], stats["qa_count"]),
            "span_accuracy": safe_div(stats["qa_correct"], stats["qa_count"])}
