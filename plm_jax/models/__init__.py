"""Flax NNX models. `build(cfg, rngs)` makes the pretraining model of `cfg.family`."""

from flax import nnx

from plm_jax.models.bert import BertEncoder, BertForPreTraining
from plm_jax.models.config import ModelConfig
from plm_jax.models.gpt import GPTLMHeadModel

FAMILIES = {"bert": BertForPreTraining, "roberta": BertForPreTraining,
            "albert": BertForPreTraining, "gpt": GPTLMHeadModel}
ENCODERS = ("bert", "roberta", "albert")


def build(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
  return FAMILIES[cfg.family](cfg, rngs=rngs)


__all__ = ["ENCODERS", "ModelConfig", "BertEncoder", "BertForPreTraining", "GPTLMHeadModel",
           "build"]
