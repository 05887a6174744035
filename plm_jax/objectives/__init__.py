"""Objectives (MLM + NSP / SOP, MLM, causal LM, XLNet's permutation LM, and the fine-tuning
kinds' classification, tagging, span extraction and generation losses), masking, and loss
statistics. OBJECTIVES is their registry: the only place objectives are told apart by name."""

from plm_jax.objectives.base import Objective
from plm_jax.objectives.objectives import (OBJECTIVES, CausalLM, Classification, MaskedLM,
                                           MaskedLMWithNSP, MaskedLMWithSOP, SpanExtraction,
                                           TokenClassification, fine_tuned_head, for_config,
                                           get, of)

__all__ = ["OBJECTIVES", "CausalLM", "Classification", "MaskedLM", "MaskedLMWithNSP",
           "MaskedLMWithSOP", "Objective", "SpanExtraction", "TokenClassification",
           "fine_tuned_head", "for_config", "get", "of"]
