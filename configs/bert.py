"""BERT pretraining (MLM + NSP): the packaged preset plm_jax/configs/bert.py. `--config bert:ARG`
names it from any directory; this file keeps `--config configs/bert.py:ARG` working in a
checkout."""

from plm_jax.configs.bert import SIZES, get_config

__all__ = ["SIZES", "get_config"]
