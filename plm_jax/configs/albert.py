"""ALBERT pretraining (masked LM + sentence-order prediction).
`--config albert:SIZE[,mesh=PRESET]`. Sizes follow Lan et al. (2019).

Factorised embeddings (E=128 projected to H), one set of layer weights shared by all layers,
sentence-order prediction instead of NSP, tanh-approximate GELU. Each row of SIZES gives the
model's shape and the data / train / optim values of that size, and the hardware it is sized
for (`target`, configlib.sized_for): base and large one 8-GPU H100 host (`--topology 8xh100`),
xlarge a TPU v5p-128 (`v5p-128`); the paper's batch of 4096 is the global batch, in as many
micro-batches as that hardware needs. `tiny` is for tests and the CPU demo (any one device).
"""

from plm_jax.configlib import apply_extra, make_config, paper_recipes, parse_arg, sized_for

MODEL = dict(shared_layers=True, hidden_act="gelu_new", max_position=512, layer_norm_eps=1e-12)
# As the paper ran it (Lan et al., 2019, section 4.1 and appendix): 125k steps of 4096 sequences
# of 512 tokens, LAMB at lr 0.00176, n-gram masking (n <= 3, p(n) ~ 1/n), no dropout. The
# published models use a 30,000-entry SentencePiece vocabulary (imported from their
# tokenizer.json); new runs train a WordPiece vocabulary. `tiny` (CPU tests, laptops) keeps
# AdamW: LAMB's per-layer trust ratio moves 0.02-scale weights too slowly for a few hundred steps.
# The reference's run_pretraining.py / optimization.py: at most 20 predictions per sequence
# (max_predictions_per_seq, not 15% of 512 = 77), the linear decay counted over all steps from
# step 0 with the warmup over it ("linear_total", as BERT's code), LAMB without the trust ratio
# on biases and LayerNorm (plm_jax/optim.py lamb).
PAPER = dict(data=dict(max_seq_length=512, vocab_size=30000),
             train=dict(steps=125_000, batch_size=4096, log_every=50),
             optim=dict(optimizer="lamb", learning_rate=1.76e-3, warmup_steps=3125,
                        schedule="linear_total"),
             extra={"objective.max_predictions": 20})
SIZES = {
    "tiny": dict(model=dict(hidden_size=128, num_layers=4, num_heads=4, mlp_dim=512,
                            embedding_size=64),
                 data=dict(max_seq_length=64, vocab_size=4096),
                 train=dict(steps=1500, batch_size=32, log_every=100),
                 optim=dict(learning_rate=1e-3, warmup_steps=60)),
    # micro-batches: the fewest that fit (`plm-jax plan` on the target proposes them)
    "base": sized_for("8xh100", accum=4, row=dict(
        model=dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072,
                   embedding_size=128), **PAPER)),
    "large": sized_for("8xh100", accum=16, row=dict(
        model=dict(hidden_size=1024, num_layers=24, num_heads=16, mlp_dim=4096,
                   embedding_size=128), **PAPER)),
    "xlarge": sized_for("v5p-128", accum=2, row=dict(
        model=dict(hidden_size=2048, num_layers=24, num_heads=16, mlp_dim=8192,
                   embedding_size=128), **PAPER)),
}

# `base-paper`, `large-paper`, `xlarge-paper`: the rows above are the paper's recipe already
# (Lan et al., 2019, section 4.1: batch 4096, LAMB lr 0.00176, 125k steps, 512 tokens with 10%
# shorter sequences, n-gram masking, no dropout); the names say so.
SIZES = paper_recipes(SIZES, {"base": {}, "large": {}, "xlarge": {}})


def get_config(arg=None):
  a = parse_arg(arg, SIZES, "tiny")
  row = SIZES[a["size"]]
  config = make_config(family="albert", size_name=a["size"], mesh=a["mesh"],
                       model={**MODEL, **row["model"]}, data=row["data"], train=row["train"],
                       optim=row["optim"])
  apply_extra(config, row)
  config.objective.masking = "ngram"
  config.model.dropout_rate = 0.0
  return config
