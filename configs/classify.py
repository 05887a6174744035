"""Fine-tuning for sequence classification: the packaged preset plm_jax/configs/classify.py.
`--config classify:ARG` names it from any directory; this file keeps `--config
configs/classify.py:ARG` working in a checkout."""

from plm_jax.configs.classify import get_config

__all__ = ["get_config"]
