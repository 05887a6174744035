"""Flax NNX models; `plm_jax.families` says which family is which and builds them."""

from plm_jax.models.bert import BertEncoder, BertForPreTraining
from plm_jax.models.classifier import HEAD_PARAMS, EncoderClassifier, GPTClassifier
from plm_jax.models.config import ModelConfig, padded_vocab
from plm_jax.models.gpt import GPTLMHeadModel

__all__ = ["HEAD_PARAMS", "BertEncoder", "BertForPreTraining", "EncoderClassifier",
           "GPTClassifier", "GPTLMHeadModel", "ModelConfig", "padded_vocab"]
