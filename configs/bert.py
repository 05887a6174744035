"""BERT pretraining (MLM + NSP). `--config configs/bert.py:SIZE[,mesh=PRESET]`.

Sizes follow Devlin et al. (2018); `tiny` is for tests and the CPU demo.
"""

from plm_jax.configlib import make_config, parse_arg

SIZES = {
    "tiny": dict(hidden_size=128, num_layers=2, num_heads=4, mlp_dim=512, max_position=128),
    "mini": dict(hidden_size=256, num_layers=4, num_heads=4, mlp_dim=1024, max_position=512),
    "base": dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072, max_position=512),
    "large": dict(hidden_size=1024, num_layers=24, num_heads=16, mlp_dim=4096, max_position=512),
}


def get_config(arg=None):
  a = parse_arg(arg, SIZES, "tiny")
  tiny = a["size"] == "tiny"
  return make_config(
      family="bert", objective="mlm_nsp", size_name=a["size"],
      size={**SIZES[a["size"]], "layer_norm_eps": 1e-12}, mesh=a["mesh"],
      # The published models use a 30,522-entry uncased WordPiece vocabulary.
      data=dict(max_seq_length=64 if tiny else 128, vocab_size=4096 if tiny else 30522),
      train=dict(steps=1500 if tiny else 1_000_000, batch_size=32 if tiny else 256,
                 log_every=100 if tiny else 50),
      optim=dict(learning_rate=1e-3 if tiny else 1e-4, warmup_steps=60 if tiny else 10_000))
