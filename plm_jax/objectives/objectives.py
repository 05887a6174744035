"""Pretraining objectives: how a batch becomes loss statistics, a loss and metrics.

An objective is stateless. `stats(model, batch, rng)` runs the model and returns sums/counts;
`loss(stats, totals)` divides by whole-batch counts (`totals`, computed from the batch alone, so
gradient accumulation is exact); `metrics(stats)` turns summed statistics into readable metrics.
"""

import jax
import jax.numpy as jnp

from plm_jax.objectives.losses import classification_stats, safe_div
from plm_jax.objectives.output_ce import output_stats
from plm_jax.objectives.permutation import perm_mask
from plm_jax.objectives.span import SpanExtraction

# Tokens per device in one chunk of the output layer's cross-entropy (objective.loss_chunk).
LOSS_CHUNK = 8192


def _prefixed(prefix: str, stats: dict) -> dict:
  return {f"{prefix}_{k}": v for k, v in stats.items()}


class MaskedLM:
  """Masked-LM cross-entropy over the chosen positions only (RoBERTa), plus, in the subclasses,
  a sentence-pair task on the pooled [CLS] state: NSP (BERT) or SOP (ALBERT)."""

  name = "mlm"
  pair: str | None = None   # the sentence-pair task: its labels are batch[f"{pair}_labels"]
  # The metrics progress lines show, in this order (those present).
  train_keys = ("loss", "mlm_loss", "mlm_accuracy", "nsp_accuracy", "sop_accuracy",
                "learning_rate")
  eval_keys = ("loss", "mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy", "sop_loss",
               "sop_accuracy")

  def __init__(self, loss_chunk: int = LOSS_CHUNK):
    self.loss_chunk = loss_chunk

  def stats(self, model, batch: dict, dropout_rng=None) -> dict:
    out = model.features(batch["input_ids"], batch["segment_ids"], batch["attention_mask"],
                         batch["masked_positions"], dropout_rng=dropout_rng)
    table, bias = model.lm_output()
    stats = _prefixed("mlm", output_stats(out["mlm_features"], table, bias,
                                          batch["masked_labels"], batch["masked_weights"],
                                          chunk_tokens=self.loss_chunk))
    if self.pair:
      labels = batch[f"{self.pair}_labels"]
      stats.update(_prefixed(self.pair, classification_stats(
          out["pair_logits"], labels, jnp.ones(labels.shape, jnp.float32))))
    return stats

  def totals(self, batch: dict) -> dict:
    totals = {"mlm_count": jnp.sum(batch["masked_weights"])}
    if self.pair:
      totals[f"{self.pair}_count"] = jnp.asarray(batch[f"{self.pair}_labels"].size, jnp.float32)
    return totals

  def loss(self, stats: dict, totals: dict) -> jax.Array:
    loss = safe_div(stats["mlm_loss_sum"], totals["mlm_count"])
    if self.pair:
      loss = loss + safe_div(stats[f"{self.pair}_loss_sum"], totals[f"{self.pair}_count"])
    return loss

  def metrics(self, stats: dict) -> dict:
    mlm_loss = safe_div(stats["mlm_loss_sum"], stats["mlm_count"])
    metrics = {"loss": mlm_loss, "mlm_loss": mlm_loss,
               "mlm_accuracy": safe_div(stats["mlm_correct"], stats["mlm_count"])}
    if self.pair:
      p = self.pair
      metrics[f"{p}_loss"] = safe_div(stats[f"{p}_loss_sum"], stats[f"{p}_count"])
      metrics[f"{p}_accuracy"] = safe_div(stats[f"{p}_correct"], stats[f"{p}_count"])
      metrics["loss"] = mlm_loss + metrics[f"{p}_loss"]
    return metrics


class MaskedLMWithNSP(MaskedLM):
  """BERT: masked LM + next-sentence prediction."""

  name = "mlm_nsp"
  pair = "nsp"


class MaskedLMWithSOP(MaskedLM):
  """ALBERT: masked LM + sentence-order prediction (were the two segments swapped?)."""

  name = "mlm_sop"
  pair = "sop"


class CausalLM:
  """GPT: mean next-token cross-entropy over real (non-padding) targets."""

  name = "causal_lm"
  train_keys = ("loss", "perplexity", "learning_rate")
  eval_keys = ("loss", "lm_loss", "perplexity", "lm_accuracy")

  def __init__(self, loss_chunk: int = LOSS_CHUNK):
    self.loss_chunk = loss_chunk

  def stats(self, model, batch: dict, dropout_rng=None) -> dict:
    # Rows are right-padded, so under the causal mask no real token ever sees padding: the
    # padding mask is left out and the attention kernel runs causal-only. Packed sequences
    # (data.builder="packed") carry segment ids and restarting positions.
    hidden = model.hidden_states(batch["input_ids"], None,
                                 segment_ids=batch.get("segment_ids"),
                                 positions=batch.get("positions"), dropout_rng=dropout_rng)
    table, bias = model.lm_output()
    return _prefixed("lm", output_stats(hidden, table, bias, batch["labels"],
                                        batch["label_weights"], chunk_tokens=self.loss_chunk))

  def totals(self, batch: dict) -> dict:
    return {"lm_count": jnp.sum(batch["label_weights"])}

  def loss(self, stats: dict, totals: dict) -> jax.Array:
    return safe_div(stats["lm_loss_sum"], totals["lm_count"])

  def metrics(self, stats: dict) -> dict:
    loss = safe_div(stats["lm_loss_sum"], stats["lm_count"])
    return {
        "loss": loss,
        "lm_loss": loss,
        "perplexity": jnp.exp(loss),
        "lm_accuracy": safe_div(stats["lm_correct"], stats["lm_count"]),
    }


class PermutationLM:
  """XLNet: permutation LM with partial prediction, over S consecutive segments of a text; each
  segment attends to the memory of the one before (no gradient through it). The loss is the
  mean cross-entropy of every target of every segment (plm_jax/objectives/permutation.py
  draws them)."""

  name = "plm"
  train_keys = ("loss", "plm_accuracy", "learning_rate")
  eval_keys = ("loss", "plm_loss", "perplexity", "plm_accuracy")

  def __init__(self, loss_chunk: int = LOSS_CHUNK, reuse_len: int = 0):
    self.loss_chunk, self.reuse_len = loss_chunk, reuse_len

  def stats(self, model, batch: dict, dropout_rng=None) -> dict:
    table, bias = model.lm_output()
    mems, total = None, None
    for s in range(batch["input_ids"].shape[1]):
      part = {k: v[:, s] for k, v in batch.items()}
      mask = perm_mask(part["perm_ranks"], part["perm_targets"] > 0, self.reuse_len)
      key = None if dropout_rng is None else jax.random.fold_in(dropout_rng, s)
      hidden, mems = model.features(part["input_ids"], part["segment_ids"],
                                    part["attention_mask"], mask, part["target_positions"],
                                    mems=mems, dropout_rng=key)
      stats = output_stats(hidden, table, bias, part["target_labels"], part["target_weights"],
                           chunk_tokens=self.loss_chunk)
      total = stats if total is None else jax.tree.map(jnp.add, total, stats)
    return _prefixed("plm", total)

  def totals(self, batch: dict) -> dict:
    return {"plm_count": jnp.sum(batch["target_weights"])}

  def loss(self, stats: dict, totals: dict) -> jax.Array:
    return safe_div(stats["plm_loss_sum"], totals["plm_count"])

  def metrics(self, stats: dict) -> dict:
    loss = safe_div(stats["plm_loss_sum"], stats["plm_count"])
    return {"loss": loss, "plm_loss": loss, "perplexity": jnp.exp(loss),
            "plm_accuracy": safe_div(stats["plm_correct"], stats["plm_count"])}


class Classification:
  """Fine-tuning: cross-entropy over classes, or mean squared error when there is one output
  (regression). `example_weights` is 0 for the rows that only pad the last eval batch."""

  name = "classify"
  train_keys = ("loss", "accuracy", "mse", "learning_rate")
  eval_keys = ("loss", "accuracy", "f1", "macro_f1", "mcc", "pearson", "spearman", "mse")

  def __init__(self, regression: bool = False):
    self.regression = regression

  def stats(self, model, batch: dict, dropout_rng=None) -> dict:
    logits = model(batch["input_ids"], batch["segment_ids"], batch["attention_mask"],
                   dropout_rng=dropout_rng)["logits"]
    weights = batch["example_weights"]
    if self.regression:
      error = logits[:, 0] - batch["labels"].astype(jnp.float32)
      return {"cls_loss_sum": jnp.sum(error * error * weights), "cls_count": jnp.sum(weights)}
    return _prefixed("cls", classification_stats(logits, batch["labels"].astype(jnp.int32),
                                                 weights))

  def totals(self, batch: dict) -> dict:
    return {"cls_count": jnp.sum(batch["example_weights"])}

  def loss(self, stats: dict, totals: dict) -> jax.Array:
    return safe_div(stats["cls_loss_sum"], totals["cls_count"])

  def metrics(self, stats: dict) -> dict:
    loss = safe_div(stats["cls_loss_sum"], stats["cls_count"])
    if self.regression:
      return {"loss": loss, "mse": loss}
    return {"loss": loss, "accuracy": safe_div(stats["cls_correct"], stats["cls_count"])}


class TokenClassification:
  """Fine-tuning a tagger: cross-entropy over the tags of the positions that carry one (a
  word's first sub-token; labels -1 elsewhere), in rows of weight 1 (`example_weights` is 0 for
  the rows that only pad the last eval batch)."""

  name = "tag"
  train_keys = ("loss", "accuracy", "learning_rate")
  eval_keys = ("loss", "accuracy", "precision", "recall", "f1")

  def _weights(self, batch: dict) -> jax.Array:
    return (batch["labels"] >= 0).astype(jnp.float32) * batch["example_weights"][:, None]

  def stats(self, model, batch: dict, dropout_rng=None) -> dict:
    logits = model(batch["input_ids"], batch["segment_ids"], batch["attention_mask"],
                   dropout_rng=dropout_rng)["logits"]
    labels = jnp.maximum(batch["labels"], 0).astype(jnp.int32)
    return _prefixed("tok", classification_stats(logits, labels, self._weights(batch)))

  def totals(self, batch: dict) -> dict:
    return {"tok_count": jnp.sum(self._weights(batch))}

  def loss(self, stats: dict, totals: dict) -> jax.Array:
    return safe_div(stats["tok_loss_sum"], totals["tok_count"])

  def metrics(self, stats: dict) -> dict:
    return {"loss": safe_div(stats["tok_loss_sum"], stats["tok_count"]),
            "accuracy": safe_div(stats["tok_correct"], stats["tok_count"])}
class GenerationLM(CausalLM):
  """Generation fine-tuning (prompt -> completion): the causal LM loss, whose label weights the
  loader sets on the completion tokens only; evaluations add the scores of decoded text."""

  name = "seq2seq"
  eval_keys = ("loss", "perplexity", "lm_accuracy", "bleu", "rouge1", "rouge2", "rougeL",
               "exact_match")


OBJECTIVES = {"mlm_nsp": MaskedLMWithNSP(), "mlm_sop": MaskedLMWithSOP(), "mlm": MaskedLM(),
              "causal_lm": CausalLM(), "plm": PermutationLM(), "classify": Classification(),
              "tag": TokenClassification(), "qa": SpanExtraction(), "seq2seq": GenerationLM()}


def get(name: str):
  return OBJECTIVES[name]


def for_config(config):
  """The objective of a config (a classifier with one output is a regression)."""
  if config.objective.name == "classify":
    return Classification(regression=config.classify.num_classes == 1)
  if config.objective.name == "tag":
    return TokenClassification()
  if config.objective.name == "qa":
    return SpanExtraction()
  if config.objective.name == "plm":
    return PermutationLM(config.objective.loss_chunk, config.objective.reuse_len)
  return type(get(config.objective.name))(loss_chunk=config.objective.loss_chunk)
