"""Objectives (MLM + NSP, MLM, causal LM, classification, span extraction), BERT masking, and
loss statistics."""

from plm_jax.models.config import FINETUNED
from plm_jax.objectives.objectives import (OBJECTIVES, CausalLM, Classification, MaskedLM,
                                           MaskedLMWithNSP, MaskedLMWithSOP, SpanExtraction,
                                           TokenClassification, for_config, get)

__all__ = ["FINETUNED", "OBJECTIVES", "CausalLM", "Classification", "MaskedLM",
           "MaskedLMWithNSP", "MaskedLMWithSOP", "SpanExtraction", "TokenClassification",
           "for_config", "get"]
