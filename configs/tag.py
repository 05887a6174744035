"""Fine-tuning for token tagging: the packaged preset plm_jax/configs/tag.py. `--config
tag:ARG` names it from any directory; this file keeps `--config configs/tag.py:ARG` working in
a checkout."""

from plm_jax.configs.tag import get_config

__all__ = ["get_config"]
