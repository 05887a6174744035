"""Objectives (MLM + NSP / SOP, MLM, causal LM, XLNet's permutation LM, and the fine-tuning
kinds' classification, tagging, span extraction and generation losses), masking, and loss
statistics."""

from plm_jax.models.config import FINETUNED
from plm_jax.objectives.objectives import (OBJECTIVES, CausalLM, Classification, MaskedLM,
                                           MaskedLMWithNSP, MaskedLMWithSOP, SpanExtraction,
                                           TokenClassification, for_config, get)

__all__ = ["FINETUNED", "OBJECTIVES", "CausalLM", "Classification", "MaskedLM",
           "MaskedLMWithNSP", "MaskedLMWithSOP", "SpanExtraction", "TokenClassification",
           "for_config", "get"]
