"""The objectives, pretraining and fine-tuning: how a batch becomes loss statistics, a loss and
metrics, and what an objective asks of the rest of the run (its table, OBJECTIVES, is the
registry that tells objectives apart: the data it is built from and the batch it is fed, the
head the model grows, the segments and predictions of a row).

An objective is stateless. `stats(model, batch, rng)` runs the model and returns sums/counts;
`loss(stats, totals)` divides by whole-batch counts (`totals`, computed from the batch alone, so
gradient accumulation is exact); `metrics(stats)` turns summed statistics into readable metrics.
"""

import jax
import jax.numpy as jnp
import numpy as np

from plm_jax.objectives.base import Objective, rows_of
from plm_jax.objectives.losses import classification_stats, safe_div
from plm_jax.objectives.masking import max_predictions_for
from plm_jax.objectives.output_ce import output_stats
from plm_jax.objectives.permutation import num_predict_for, perm_mask
from plm_jax.objectives.span import SpanExtraction

# Tokens per device in one chunk of the output layer's cross-entropy (objective.loss_chunk).
LOSS_CHUNK = 8192


def _prefixed(prefix: str, stats: dict) -> dict:
  return {f"{prefix}_{k}": v for k, v in stats.items()}


class MaskedLM(Objective):
  """Masked-LM cross-entropy over the chosen positions only (RoBERTa), plus, in the subclasses,
  a sentence-pair task on the pooled [CLS] state: NSP (BERT) or SOP (ALBERT)."""

  name = "mlm"
  builder = "full_sentences"
  pair: str | None = None   # the sentence-pair task: its labels are batch[f"{pair}_labels"]
  # The metrics progress lines show, in this order (those present).
  train_keys = ("loss", "mlm_loss", "mlm_accuracy", "nsp_accuracy", "sop_accuracy",
                "learning_rate")
  eval_keys = ("loss", "mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy", "sop_loss",
               "sop_accuracy")

  def __init__(self, loss_chunk: int = LOSS_CHUNK):
    self.loss_chunk = loss_chunk

  @classmethod
  def for_config(cls, config):
    return cls(loss_chunk=config.objective.loss_chunk)

  def model_fields(self, config) -> dict:
    return {"nsp_head": self.pair is not None}

  def predictions(self, config) -> int:
    """objective.max_predictions (ALBERT's 20), or enough that round(mlm_probability x
    tokens) is never cut."""
    o = config.objective
    return o.get("max_predictions", 0) or max_predictions_for(config.data.max_seq_length,
                                                              o.mlm_probability)

  def batch_shapes(self, config) -> dict:
    b, t = config.train.batch_size, config.data.max_seq_length
    p = self.predictions(config)
    shapes = {"input_ids": ((b, t), np.int32), "segment_ids": ((b, t), np.int32),
              "attention_mask": ((b, t), np.int32), "masked_positions": ((b, p), np.int32),
              "masked_labels": ((b, p), np.int32), "masked_weights": ((b, p), np.float32)}
    if self.pair:
      shapes[f"{self.pair}_labels"] = ((b,), np.int32)
    return shapes

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
  builder = "nsp"
  pair = "nsp"


class MaskedLMWithSOP(MaskedLM):
  """ALBERT: masked LM + sentence-order prediction (were the two segments swapped?)."""

  name = "mlm_sop"
  builder = "sop"
  pair = "sop"


class CausalLM(Objective):
  """GPT: mean next-token cross-entropy over real (non-padding) targets."""

  name = "causal_lm"
  builder = "blocks"
  train_keys = ("loss", "perplexity", "learning_rate")
  eval_keys = ("loss", "lm_loss", "perplexity", "lm_accuracy")
  documents_from = 1        # packed documents are numbered from 1 (0 is padding)

  def __init__(self, loss_chunk: int = LOSS_CHUNK):
    self.loss_chunk = loss_chunk

  @classmethod
  def for_config(cls, config):
    return cls(loss_chunk=config.objective.loss_chunk)

  def batch_shapes(self, config) -> dict:
    b, t = config.train.batch_size, config.data.max_seq_length
    shapes = {"input_ids": ((b, t), np.int32), "attention_mask": ((b, t), np.int32),
              "labels": ((b, t), np.int32), "label_weights": ((b, t), np.float32)}
    if config.data.builder == "packed" or self.completions_only:
      shapes["segment_ids"] = ((b, t), np.int32)
      shapes["positions"] = ((b, t), np.int32)
    return shapes

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


class PermutationLM(Objective):
  """XLNet: permutation LM with partial prediction, over S consecutive segments of a text; each
  segment attends to the memory of the one before (no gradient through it). The loss is the
  mean cross-entropy of every target of every segment (plm_jax/objectives/permutation.py
  draws them)."""

  name = "plm"
  builder = "plm"
  permuted = True
  train_keys = ("loss", "plm_accuracy", "learning_rate")
  eval_keys = ("loss", "plm_loss", "perplexity", "plm_accuracy")

  def __init__(self, loss_chunk: int = LOSS_CHUNK, reuse_len: int = 0):
    self.loss_chunk, self.reuse_len = loss_chunk, reuse_len

  @classmethod
  def for_config(cls, config):
    return cls(config.objective.loss_chunk, config.objective.reuse_len)

  def segments(self, config) -> int:
    return config.objective.plm_segments

  def predictions(self, config) -> int:
    return num_predict_for(config.data.max_seq_length, config.objective.plm_k)

  def batch_shapes(self, config) -> dict:
    b, t = config.train.batch_size, config.data.max_seq_length
    s, p = self.segments(config), self.predictions(config)
    return {**{k: ((b, s, t), np.int32) for k in ("input_ids", "segment_ids", "attention_mask",
                                                  "perm_ranks", "perm_targets")},
            "target_positions": ((b, s, p), np.int32), "target_labels": ((b, s, p), np.int32),
            "target_weights": ((b, s, p), np.float32)}

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


class Classification(Objective):
  """Fine-tuning: cross-entropy over classes, or mean squared error when there is one output
  (regression). `example_weights` is 0 for the rows that only pad the last eval batch."""

  name = "classify"
  builder = "classify"
  head = "classifier"
  rows = True
  train_keys = ("loss", "accuracy", "mse", "learning_rate")
  eval_keys = ("loss", "accuracy", "f1", "macro_f1", "mcc", "pearson", "spearman", "mse")

  def __init__(self, regression: bool = False):
    self.regression = regression

  @classmethod
  def for_config(cls, config):
    return cls(regression=config.classify.num_classes == 1)

  def model_fields(self, config) -> dict:
    return {"num_labels": config.classify.num_classes}

  def batch_shapes(self, config) -> dict:
    b = config.train.batch_size
    label = np.float32 if config.classify.num_classes == 1 else np.int32
    return {**rows_of(config), "labels": ((b,), label)}

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


class TokenClassification(Objective):
  """Fine-tuning a tagger: cross-entropy over the tags of the positions that carry one (a
  word's first sub-token; labels -1 elsewhere), in rows of weight 1 (`example_weights` is 0 for
  the rows that only pad the last eval batch)."""

  name = "tag"
  builder = "classify"          # tagged rows are served as classification rows are
  head = "token tagger"
  rows = True

  def model_fields(self, config) -> dict:
    return {"num_labels": config.classify.num_classes, "token_labels": True}

  def batch_shapes(self, config) -> dict:
    b, t = config.train.batch_size, config.data.max_seq_length
    return {**rows_of(config), "labels": ((b, t), np.int32)}   # a tag (or -1: none) per position
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
  builder = "seq2seq"
  completions_only = True       # the loss on the completion tokens only
  eval_keys = ("loss", "perplexity", "lm_accuracy", "bleu", "rouge1", "rouge2", "rougeL",
               "exact_match")


OBJECTIVES = {o.name: o for o in (MaskedLMWithNSP(), MaskedLMWithSOP(), MaskedLM(), CausalLM(),
                                  PermutationLM(), Classification(), TokenClassification(),
                                  SpanExtraction(), GenerationLM())}


def get(name: str) -> Objective:
  return OBJECTIVES[name]


def of(config) -> Objective:
  """The objective a config trains (its table entry: what it asks of the data and the model)."""
  return OBJECTIVES[config.objective.name]


def for_config(config) -> Objective:
  """The objective of a config, set up as the config says (a classifier with one output is a
  regression)."""
  return type(of(config)).for_config(config)


def fine_tuned_head(config) -> str | None:
  """What a fine-tuning run of `config` holds beside the pretrained body ("classifier", ...),
  or None: a pretraining run (or a generation run, whose head is the LM's own)."""
  return of(config).head
