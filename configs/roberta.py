"""RoBERTa pretraining (masked LM with full-sentence packing, no NSP): the packaged preset
plm_jax/configs/roberta.py. `--config roberta:ARG` names it from any directory; this file keeps
`--config configs/roberta.py:ARG` working in a checkout."""

from plm_jax.configs.roberta import SIZES, get_config

__all__ = ["SIZES", "get_config"]
