"""RoBERTa pretraining (masked LM with full-sentence packing, no NSP): the packaged preset
plm_jax/configs/roberta.py. `--config roberta:ARG` names it from any directory; this file keeps
`--config configs/roberta.py:ARG` working in a checkout."""

from plm_jax.configs.roberta import *  # noqa: F401,F403
from plm_jax.configs.roberta import get_config  # noqa: F401
