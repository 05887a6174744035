"""Token classification heads: one label per position, over the pretrained bodies.

As transformers' *ForTokenClassification: dropout + a linear `classifier` over every final hidden
state (BERT, RoBERTa, ALBERT: the encoder's sequence output, the pooler unused; XLNet: the
content stream, dropped out by the body already; GPT-2: the causal decoder's states, so a token
sees only the words before it). The body keeps the pretraining model's parameter names, so a
pretraining checkpoint's body is grafted on unchanged and only `classifier` is new.
"""

import jax.numpy as jnp
from flax import nnx

from plm_jax.models.bert import BertEncoder
from plm_jax.models.config import ModelConfig
from plm_jax.models.gpt import GPTLMHeadModel
from plm_jax.models.layers import Dense, KeyStream, dropout, normal_init
from plm_jax.models.xlnet import XLNetModel


def _head(cfg: ModelConfig, rngs: nnx.Rngs) -> Dense:
  return Dense(cfg.hidden_size, (cfg.num_labels,), ("embed", "classes"),
               init=normal_init(cfg.initializer_range), dtype=cfg.compute_dtype,
               param_dtype=cfg.storage_dtype, rngs=rngs)


def _keys(dropout_rng):
  return KeyStream(dropout_rng) if dropout_rng is not None else None


class EncoderTagger(nnx.Module):
  """BERT / RoBERTa / ALBERT encoder + dropout + a classifier over each position."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.encoder = BertEncoder(cfg, rngs=rngs)
    self.classifier = _head(cfg, rngs)

  def __call__(self, input_ids, segment_ids, attention_mask, dropout_rng=None):
    """Returns {"logits": [B, T, num_labels]} in float32."""
    keys = _keys(dropout_rng)
    h, _ = self.encoder(input_ids, segment_ids, attention_mask,
                        dropout_rng=keys.next() if keys is not None else None)
    h = dropout(h, self.cfg.dropout_rate, keys)
    return {"logits": self.classifier(h).astype(jnp.float32)}


class GPTTagger(GPTLMHeadModel):
  """GPT-2 + dropout + a classifier over each position (GPT2ForTokenClassification). Causal:
  a word's label is predicted from that word and the ones before it only."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    super().__init__(cfg, rngs=rngs)
    self.classifier = _head(cfg, rngs)

  def __call__(self, input_ids, segment_ids, attention_mask, dropout_rng=None):
    keys = _keys(dropout_rng)
    h = self.hidden_states(input_ids, attention_mask,
                           dropout_rng=keys.next() if keys is not None else None)
    h = dropout(h, self.cfg.dropout_rate, keys)
    return {"logits": self.classifier(h).astype(jnp.float32)}


class XLNetTagger(nnx.Module):
  """XLNet + a classifier over each position of the content stream
  (XLNetForTokenClassification: no dropout of its own, the body's output is dropped out)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.transformer = XLNetModel(cfg, rngs=rngs)
    self.classifier = _head(cfg, rngs)

  def __call__(self, input_ids, segment_ids, attention_mask, dropout_rng=None):
    h, _ = self.transformer(input_ids, segment_ids, attention_mask, dropout_rng=dropout_rng)
    return {"logits": self.classifier(h).astype(jnp.float32)}
