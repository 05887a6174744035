"""Flax NNX models. `build(cfg, rngs)` makes the pretraining model (or classifier) of a family."""

from flax import nnx

from plm_jax.models.bert import BertEncoder, BertForPreTraining
from plm_jax.models.classifier import HEAD_PARAMS, EncoderClassifier, GPTClassifier
from plm_jax.models.config import ModelConfig
from plm_jax.models.gpt import GPTLMHeadModel

FAMILIES = {"bert": BertForPreTraining, "roberta": BertForPreTraining,
            "albert": BertForPreTraining, "gpt": GPTLMHeadModel}
ENCODERS = ("bert", "roberta", "albert")
CLASSIFIERS = {"bert": EncoderClassifier, "roberta": EncoderClassifier,
               "albert": EncoderClassifier, "gpt": GPTClassifier}


def build(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
  """The pretraining model of the family, or its sequence classifier when cfg.num_labels > 0."""
  return (CLASSIFIERS if cfg.num_labels else FAMILIES)[cfg.family](cfg, rngs=rngs)


__all__ = ["CLASSIFIERS", "ENCODERS", "HEAD_PARAMS", "BertEncoder", "BertForPreTraining",
           "EncoderClassifier", "GPTClassifier", "GPTLMHeadModel", "ModelConfig", "build"]
