"""ALBERT pretraining (masked LM + sentence-order prediction).
`--config configs/albert.py:SIZE[,mesh=PRESET]`. Sizes follow Lan et al. (2019).

Factorised embeddings (E=128 projected to H), one set of layer weights shared by all layers,
sentence-order prediction instead of NSP, tanh-approximate GELU.
"""

from plm_jax.configlib import make_config, parse_arg

COMMON = dict(shared_layers=True, hidden_act="gelu_new", max_position=512)
SIZES = {
    "tiny": dict(hidden_size=128, num_layers=4, num_heads=4, mlp_dim=512, embedding_size=64),
    "base": dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072, embedding_size=128),
    "large": dict(hidden_size=1024, num_layers=24, num_heads=16, mlp_dim=4096,
                  embedding_size=128),
    "xlarge": dict(hidden_size=2048, num_layers=24, num_heads=16, mlp_dim=8192,
                   embedding_size=128),
}


def get_config(arg=None):
  a = parse_arg(arg, SIZES, "tiny")
  tiny = a["size"] == "tiny"
  return make_config(
      family="albert", objective="mlm_sop", size_name=a["size"],
      size={**COMMON, **SIZES[a["size"]], "layer_norm_eps": 1e-12}, mesh=a["mesh"],
      # The published models use a 30,000-entry SentencePiece vocabulary (imported from their
      # tokenizer.json); new runs train a WordPiece vocabulary.
      data=dict(max_seq_length=64 if tiny else 512, vocab_size=4096 if tiny else 30000),
      train=dict(steps=1500 if tiny else 125_000, batch_size=32 if tiny else 4096,
                 log_every=100 if tiny else 50),
      optim=dict(learning_rate=1e-3 if tiny else 1.76e-3, warmup_steps=60 if tiny else 3125))
