"""Comparing the families (`plm-jax compare`): the packaged preset plm_jax/configs/compare.py.
`--config compare:ARG` names it from any directory; this file keeps
`--config configs/compare.py:ARG` working in a checkout."""

from plm_jax.configs.compare import SETUPS, get_config

__all__ = ["SETUPS", "get_config"]
