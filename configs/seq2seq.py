"""Generation fine-tuning: the packaged preset plm_jax/configs/seq2seq.py. `--config
seq2seq:ARG` names it from any directory; this file keeps `--config configs/seq2seq.py:ARG`
working in a checkout."""

from plm_jax.configs.seq2seq import get_config

__all__ = ["get_config"]
