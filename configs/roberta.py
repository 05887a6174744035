"""RoBERTa pretraining (masked LM with full-sentence packing, no NSP).
`--config configs/roberta.py:SIZE[,mesh=PRESET]`. Sizes follow Liu et al. (2019).

RoBERTa is BERT's network with byte-level BPE (<s> <pad> </s> <unk> <mask>), one segment type,
and positions numbered past the padding id (so imported fairseq/transformers weights line up).
"""

from plm_jax.configlib import make_config, parse_arg

COMMON = dict(type_vocab_size=1, position_offset=True)
SIZES = {
    "tiny": dict(hidden_size=128, num_layers=2, num_heads=4, mlp_dim=512, max_position=130),
    "base": dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072, max_position=514),
    "large": dict(hidden_size=1024, num_layers=24, num_heads=16, mlp_dim=4096, max_position=514),
}


def get_config(arg=None):
  a = parse_arg(arg, SIZES, "tiny")
  tiny = a["size"] == "tiny"
  return make_config(
      family="roberta", objective="mlm", size_name=a["size"],
      size={**SIZES[a["size"]], **COMMON, "layer_norm_eps": 1e-5}, mesh=a["mesh"],
      # The published models use a 50,265-entry byte-level BPE vocabulary.
      data=dict(max_seq_length=64 if tiny else 512, vocab_size=4096 if tiny else 50265),
      train=dict(steps=1500 if tiny else 500_000, batch_size=32 if tiny else 8192,
                 log_every=100 if tiny else 50),
      optim=dict(learning_rate=1e-3 if tiny else 6e-4, warmup_steps=60 if tiny else 24_000,
                 b2=0.98, weight_decay=0.01))
