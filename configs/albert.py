"""ALBERT pretraining (masked LM + sentence-order prediction): the packaged preset
plm_jax/configs/albert.py. `--config albert:ARG` names it from any directory; this file keeps
`--config configs/albert.py:ARG` working in a checkout."""

from plm_jax.configs.albert import SIZES, get_config

__all__ = ["SIZES", "get_config"]
