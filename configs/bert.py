"""BERT pretraining (MLM + NSP): the packaged preset plm_jax/configs/bert.py. `--config bert:ARG`
names it from any directory; this file keeps `--config configs/bert.py:ARG` working in a
checkout."""

from plm_jax.configs.bert import *  # noqa: F401,F403
from plm_jax.configs.bert import get_config  # noqa: F401
