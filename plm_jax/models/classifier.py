"""Sequence classification heads on the pretrained bodies.

Encoders (BERT, RoBERTa, ALBERT): dropout + a linear classifier over the pooled [CLS] state, as
transformers' BertForSequenceClassification / AlbertForSequenceClassification. GPT: a linear
"score" over the final hidden state of the last non-padding token (GPT2ForSequenceClassification).
The body keeps the parameter names of the pretraining model ("encoder", or GPT-2's "wte",
"layers", ...), so a pretraining checkpoint's body is grafted on unchanged and only the head is
new. One output is regression (mean squared error); two or more are classes.
"""

import jax.numpy as jnp
from flax import nnx

from plm_jax.models.bert import BertEncoder
from plm_jax.models.config import ModelConfig
from plm_jax.models.gpt import GPTLMHeadModel
from plm_jax.models.layers import Dense, KeyStream, dropout, normal_init

# Top-level parameter names of each head (new at fine-tuning, never taken from pretraining);
# "qa_outputs": the start / end head of question answering (plm_jax/models/span_head.py).
HEAD_PARAMS = ("classifier", "score", "qa_outputs")


def _head(cfg: ModelConfig, use_bias: bool, rngs: nnx.Rngs) -> Dense:
  return Dense(cfg.hidden_size, (cfg.num_labels,), ("embed", "classes"),
               init=normal_init(cfg.initializer_range), use_bias=use_bias,
               dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype, rngs=rngs)


class EncoderClassifier(nnx.Module):
  """BERT / RoBERTa / ALBERT encoder + classifier over the pooled [CLS] state."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.encoder = BertEncoder(cfg, rngs=rngs)
    self.classifier = _head(cfg, True, rngs)

  def __call__(self, input_ids, segment_ids, attention_mask, dropout_rng=None):
    """Returns {"logits": [B, num_labels]} in float32."""
    keys = KeyStream(dropout_rng) if dropout_rng is not None else None
    _, pooled = self.encoder(input_ids, segment_ids, attention_mask,
                             dropout_rng=keys.next() if keys is not None else None)
    pooled = dropout(pooled, self.cfg.dropout_rate, keys)
    return {"logits": self.classifier(pooled).astype(jnp.float32)}


class GPTClassifier(GPTLMHeadModel):
  """GPT-2 + a bias-free score over the last non-padding token's final hidden state.

  Inputs are right-padded: the last real token is at attention_mask.sum() - 1. Sentence pairs
  are joined with end-of-text (`a <eos> b <eos>`); GPT has no segment embeddings, so the
  segment ids are ignored.
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    super().__init__(cfg, rngs=rngs)
    self.score = _head(cfg, False, rngs)

  def __call__(self, input_ids, segment_ids, attention_mask, dropout_rng=None):
    """Returns {"logits": [B, num_labels]} in float32."""
    h = self.hidden_states(input_ids, attention_mask, dropout_rng=dropout_rng)
    last = jnp.maximum(jnp.sum(attention_mask, axis=1).astype(jnp.int32) - 1, 0)
    picked = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]
    return {"logits": self.score(picked).astype(jnp.float32)}
