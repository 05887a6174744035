"""Objectives (MLM + NSP, MLM, causal LM, classification), BERT masking, and loss statistics."""

from plm_jax.objectives.objectives import (OBJECTIVES, CausalLM, Classification, MaskedLM,
                                           MaskedLMWithNSP, MaskedLMWithSOP, for_config, get)

__all__ = ["OBJECTIVES", "CausalLM", "Classification", "MaskedLM", "MaskedLMWithNSP",
           "MaskedLMWithSOP", "for_config", "get"]
