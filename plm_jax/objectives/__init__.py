"""Objectives (MLM + NSP, MLM, causal LM), BERT masking, and loss statistics."""

from plm_jax.objectives.objectives import (OBJECTIVES, CausalLM, MaskedLM, MaskedLMWithNSP,
                                           MaskedLMWithSOP, get)

__all__ = ["OBJECTIVES", "CausalLM", "MaskedLM", "MaskedLMWithNSP", "MaskedLMWithSOP", "get"]
