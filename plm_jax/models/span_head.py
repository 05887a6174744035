"""Extractive question answering heads: a start and an end logit for every token.

One linear layer (hidden -> 2) over the body's final hidden states, as transformers'
BertForQuestionAnswering / RobertaForQuestionAnswering / AlbertForQuestionAnswering (`qa_outputs`,
no dropout before it) and XLNetForQuestionAnsweringSimple (XLNet's output keeps its own final
dropout). The body keeps the pretraining model's parameter names ("encoder", "transformer"), so a
pretraining checkpoint's body is grafted on unchanged and only `qa_outputs` is new. The encoders'
[CLS] pooler stays in the parameters (the body is BertEncoder) but is never read, nor exported.
"""

import jax.numpy as jnp
from flax import nnx

from plm_jax.models.bert import BertEncoder
from plm_jax.models.config import ModelConfig
from plm_jax.models.layers import Dense, KeyStream, normal_init
from plm_jax.models.xlnet import XLNetModel


def _qa_outputs(cfg: ModelConfig, rngs: nnx.Rngs) -> Dense:
  return Dense(cfg.hidden_size, (2,), ("embed", "classes"),
               init=normal_init(cfg.initializer_range), use_bias=True,
               dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype, rngs=rngs)


def _split(logits) -> dict:
  logits = logits.astype(jnp.float32)
  return {"start_logits": logits[..., 0], "end_logits": logits[..., 1]}


class EncoderSpanModel(nnx.Module):
  """BERT / RoBERTa / ALBERT encoder + qa_outputs over every token."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.encoder = BertEncoder(cfg, rngs=rngs)
    self.qa_outputs = _qa_outputs(cfg, rngs)

  def __call__(self, input_ids, segment_ids, attention_mask, dropout_rng=None):
    """Returns {"start_logits", "end_logits"}: [B, T] float32."""
    h, _ = self.encoder(input_ids, segment_ids, attention_mask, dropout_rng=dropout_rng)
    return _split(self.qa_outputs(h))


class XLNetSpanModel(nnx.Module):
  """XLNet + qa_outputs over every token (XLNetForQuestionAnsweringSimple)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.transformer = XLNetModel(cfg, rngs=rngs)
    self.qa_outputs = _qa_outputs(cfg, rngs)

  def __call__(self, input_ids, segment_ids, attention_mask, dropout_rng=None):
    keys = KeyStream(dropout_rng) if dropout_rng is not None else None
    h, _ = self.transformer(input_ids, segment_ids, attention_mask,
                            dropout_rng=keys.next() if keys is not None else None)
    return _split(self.qa_outputs(h))
