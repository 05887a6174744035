"""RoBERTa pretraining (masked LM with full-sentence packing, no NSP).
`--config roberta:SIZE[,mesh=PRESET]`. Sizes follow Liu et al. (2019).

RoBERTa is BERT's network with byte-level BPE (<s> <pad> </s> <unk> <mask>), one segment type,
and positions numbered past the padding id (so imported fairseq/transformers weights line up).
Each row of SIZES gives the model's shape and the data / train / optim values of that size, and
the hardware it is sized for (`target`, configlib.sized_for): base one 8-GPU H100 host
(`--topology 8xh100`), large four of them (`4x8xh100`, mesh=gpu-4x8); the paper's batch of 8k
sequences is the global batch, in as many micro-batches as that hardware needs. `tiny` is for
tests and the CPU demo (any one device).
"""

from plm_jax.configlib import apply_extra, make_config, paper_recipes, parse_arg, sized_for

MODEL = dict(type_vocab_size=1, position_offset=True, layer_norm_eps=1e-5)
OPTIM = dict(b2=0.98, weight_decay=0.01)
# 500k steps of 8k sequences of 512 tokens; the published models use a 50,265-entry
# byte-level BPE vocabulary.
PAPER = dict(data=dict(max_seq_length=512, vocab_size=50265),
             train=dict(steps=500_000, batch_size=8192, log_every=50),
             optim=dict(learning_rate=6e-4, warmup_steps=24_000))
SIZES = {
    "tiny": dict(model=dict(hidden_size=128, num_layers=2, num_heads=4, mlp_dim=512,
                            max_position=130),
                 data=dict(max_seq_length=64, vocab_size=4096),
                 train=dict(steps=1500, batch_size=32, log_every=100),
                 optim=dict(learning_rate=1e-3, warmup_steps=60)),
    # micro-batches: the fewest that fit (`plm-jax plan` on the target proposes them)
    "base": sized_for("8xh100", accum=8, row=dict(
        model=dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072,
                   max_position=514), **PAPER)),
    "large": sized_for("4x8xh100", accum=4, row=dict(
        model=dict(hidden_size=1024, num_layers=24, num_heads=16, mlp_dim=4096,
                   max_position=514),
        **{**PAPER, "optim": dict(learning_rate=4e-4, warmup_steps=30_000)})),
}
# `base-paper`, `large-paper`: Liu et al. (2019), appendix Table 9: the rows above (large: lr
# 4e-4 after 30k warmup steps) with Adam eps 1e-6, beta2 0.98, weight decay 0.01, no gradient
# clipping, dropout and attention dropout 0.1. Attention dropout is in no fused attention
# kernel: each layer keeps its [B, N, T, T] probabilities, so twice the micro-batches.
RECIPE = dict(optim=dict(eps=1e-6, clip_norm=0.0),
              extra={"model.attention_dropout_rate": 0.1})
SIZES = paper_recipes(SIZES, {
    size: {**RECIPE, "optim": {**RECIPE["optim"], "grad_accum_steps": accum}}
    for size, accum in (("base", 16), ("large", 8))})


def get_config(arg=None):
  a = parse_arg(arg, SIZES, "tiny")
  row = SIZES[a["size"]]
  return apply_extra(make_config(family="roberta", size_name=a["size"], mesh=a["mesh"],
                                 model={**row["model"], **MODEL}, data=row["data"],
                                 train=row["train"], optim={**OPTIM, **row["optim"]}), row)
