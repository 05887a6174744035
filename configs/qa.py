"""Extractive question answering: the packaged preset plm_jax/configs/qa.py. `--config qa:ARG`
names it from any directory; this file keeps `--config configs/qa.py:ARG` working in a
checkout."""

from plm_jax.configs.qa import get_config

__all__ = ["get_config"]
