"""GPT-2 pretraining (causal LM): the packaged preset plm_jax/configs/gpt.py. `--config gpt:ARG`
names it from any directory; this file keeps `--config configs/gpt.py:ARG` working in a
checkout."""

from plm_jax.configs.gpt import SIZES, get_config

__all__ = ["SIZES", "get_config"]
