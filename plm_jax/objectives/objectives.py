"""Pretraining objectives: how a batch becomes loss statistics, a loss and metrics.

An objective is stateless. `stats(model, batch, rng)` runs the model and returns sums/counts;
`loss(stats, totals)` divides by whole-batch counts (`totals`, computed from the batch alone, so
gradient accumulation is exact); `metrics(stats)` turns summed statistics into readable metrics.
"""

import jax
import jax.numpy as jnp

from plm_jax.objectives.losses import classification_stats, safe_div


def _prefixed(prefix: str, stats: dict) -> dict:
  return {f"{prefix}_{k}": v for k, v in stats.items()}


class MaskedLMWithNSP:
  """BERT: masked-LM cross-entropy over the chosen positions + next-sentence prediction."""

  name = "mlm_nsp"
  pair = "nsp"          # the sentence-pair task: its labels are batch[f"{pair}_labels"]

  @property
  def batch_fields(self):
    return ("input_ids", "segment_ids", "attention_mask", "masked_positions", "masked_labels",
            "masked_weights", f"{self.pair}_labels")

  def stats(self, model, batch: dict, dropout_rng=None) -> dict:
    out = model(batch["input_ids"], batch["segment_ids"], batch["attention_mask"],
                batch["masked_positions"], dropout_rng=dropout_rng)
    mlm = classification_stats(out["mlm_logits"], batch["masked_labels"], batch["masked_weights"])
    labels = batch[f"{self.pair}_labels"]
    pair = classification_stats(out["pair_logits"], labels, jnp.ones(labels.shape, jnp.float32))
    return {**_prefixed("mlm", mlm), **_prefixed(self.pair, pair)}

  def totals(self, batch: dict) -> dict:
    return {"mlm_count": jnp.sum(batch["masked_weights"]),
            f"{self.pair}_count": jnp.asarray(batch[f"{self.pair}_labels"].size, jnp.float32)}

  def loss(self, stats: dict, totals: dict) -> jax.Array:
    p = self.pair
    return (safe_div(stats["mlm_loss_sum"], totals["mlm_count"])
            + safe_div(stats[f"{p}_loss_sum"], totals[f"{p}_count"]))

  def metrics(self, stats: dict) -> dict:
    p = self.pair
    mlm_loss = safe_div(stats["mlm_loss_sum"], stats["mlm_count"])
    pair_loss = safe_div(stats[f"{p}_loss_sum"], stats[f"{p}_count"])
    return {
        "loss": mlm_loss + pair_loss,
        "mlm_loss": mlm_loss,
        "mlm_accuracy": safe_div(stats["mlm_correct"], stats["mlm_count"]),
        f"{p}_loss": pair_loss,
        f"{p}_accuracy": safe_div(stats[f"{p}_correct"], stats[f"{p}_count"]),
    }


class MaskedLMWithSOP(MaskedLMWithNSP):
  """ALBERT: masked LM + sentence-order prediction (were the two segments swapped?)."""

  name = "mlm_sop"
  pair = "sop"


class MaskedLM(MaskedLMWithNSP):
  """RoBERTa-style: masked-LM cross-entropy over the chosen positions only, no NSP."""

  name = "mlm"
  batch_fields = ("input_ids", "segment_ids", "attention_mask", "masked_positions",
                  "masked_labels", "masked_weights")   # type: ignore[assignment]

  def stats(self, model, batch: dict, dropout_rng=None) -> dict:
    out = model(batch["input_ids"], batch["segment_ids"], batch["attention_mask"],
                batch["masked_positions"], dropout_rng=dropout_rng)
    return _prefixed("mlm", classification_stats(out["mlm_logits"], batch["masked_labels"],
                                                 batch["masked_weights"]))

  def totals(self, batch: dict) -> dict:
    return {"mlm_count": jnp.sum(batch["masked_weights"])}

  def loss(self, stats: dict, totals: dict) -> jax.Array:
    return safe_div(stats["mlm_loss_sum"], totals["mlm_count"])

  def metrics(self, stats: dict) -> dict:
    loss = safe_div(stats["mlm_loss_sum"], stats["mlm_count"])
    return {"loss": loss, "mlm_loss": loss,
            "mlm_accuracy": safe_div(stats["mlm_correct"], stats["mlm_count"])}


class CausalLM:
  """GPT: mean next-token cross-entropy over real (non-padding) targets."""

  name = "causal_lm"
  batch_fields = ("input_ids", "attention_mask", "labels", "label_weights")

  def stats(self, model, batch: dict, dropout_rng=None) -> dict:
    # Packed sequences (data.builder="packed") carry segment ids and restarting positions.
    out = model(batch["input_ids"], batch["attention_mask"], segment_ids=batch.get("segment_ids"),
                positions=batch.get("positions"), dropout_rng=dropout_rng)
    return _prefixed("lm", classification_stats(out["logits"], batch["labels"],
                                                batch["label_weights"]))

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


OBJECTIVES = {"mlm_nsp": MaskedLMWithNSP(), "mlm_sop": MaskedLMWithSOP(), "mlm": MaskedLM(),
              "causal_lm": CausalLM()}


def get(name: str):
  return OBJECTIVES[name]
