"""XLNet pretraining (permutation LM): the packaged preset plm_jax/configs/xlnet.py. `--config
xlnet:ARG` names it from any directory; this file keeps `--config configs/xlnet.py:ARG` working
in a checkout."""

from plm_jax.configs.xlnet import *  # noqa: F401,F403
from plm_jax.configs.xlnet import get_config  # noqa: F401
