"""XLNet pretraining (permutation LM): the packaged preset plm_jax/configs/xlnet.py. `--config
xlnet:ARG` names it from any directory; this file keeps `--config configs/xlnet.py:ARG` working
in a checkout."""

from plm_jax.configs.xlnet import SIZES, get_config

__all__ = ["SIZES", "get_config"]
