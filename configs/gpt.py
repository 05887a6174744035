"""GPT-2 pretraining (causal LM): the packaged preset plm_jax/configs/gpt.py. `--config gpt:ARG`
names it from any directory; this file keeps `--config configs/gpt.py:ARG` working in a
checkout."""

from plm_jax.configs.gpt import *  # noqa: F401,F403
from plm_jax.configs.gpt import get_config  # noqa: F401
