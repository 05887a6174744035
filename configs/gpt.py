"""GPT-2 pretraining (causal LM). `--config configs/gpt.py:SIZE[,mesh=PRESET]`.

Sizes follow Radford et al. (2019); `tiny` is for tests and the CPU demo.
"""

from plm_jax.configlib import make_config, parse_arg

SIZES = {
    "tiny": dict(hidden_size=128, num_layers=2, num_heads=4, mlp_dim=512, max_position=128),
    "124m": dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072, max_position=1024),
    "355m": dict(hidden_size=1024, num_layers=24, num_heads=16, mlp_dim=4096, max_position=1024),
    "774m": dict(hidden_size=1280, num_layers=36, num_heads=20, mlp_dim=5120, max_position=1024),
    "1.5b": dict(hidden_size=1600, num_layers=48, num_heads=25, mlp_dim=6400, max_position=1024),
}


def get_config(arg=None):
  a = parse_arg(arg, SIZES, "tiny")
  tiny = a["size"] == "tiny"
  config = make_config(
      family="gpt", objective="causal_lm", size_name=a["size"],
      size={**SIZES[a["size"]], "layer_norm_eps": 1e-5}, mesh=a["mesh"],
      # GPT-2's byte-level BPE has 50,257 entries (padded to 50,304 in the model).
      data=dict(max_seq_length=64 if tiny else 1024, vocab_size=4096 if tiny else 50257),
      train=dict(steps=600 if tiny else 600_000, batch_size=32 if tiny else 512),
      optim=dict(learning_rate=1e-3 if tiny else 6e-4, warmup_steps=60 if tiny else 2000,
                 schedule="cosine", end_lr_fraction=0.1, weight_decay=0.1, b2=0.95, eps=1e-8))
  return config
