"""Objectives (MLM + NSP, causal LM), BERT masking, and loss statistics."""

from plm_jax.objectives.objectives import OBJECTIVES, CausalLM, MaskedLMWithNSP, get

__all__ = ["OBJECTIVES", "CausalLM", "MaskedLMWithNSP", "get"]
