"""Objectives (MLM + NSP, MLM, causal LM, classification, span extraction), BERT masking, and
loss statistics."""

from plm_jax.objectives.objectives import (FINETUNED, OBJECTIVES, CausalLM, Classification,
                                           MaskedLM, MaskedLMWithNSP, MaskedLMWithSOP,
                                           SpanExtraction, for_config, get)

__all__ = ["FINETUNED", "OBJECTIVES", "CausalLM", "Classification", "MaskedLM",
           "MaskedLMWithNSP", "MaskedLMWithSOP", "SpanExtraction", "for_config", "get"]
