"""GPT-2 pretraining (causal LM). `--config gpt:SIZE[,mesh=PRESET]`.

Sizes follow Radford et al. (2019); `tiny` is for tests and the CPU demo (any one device). Each
row of SIZES gives the model's shape and the data / train / optim values of that size, and the
hardware it is sized for (`target`, configlib.sized_for): 124m one H100 (`--topology 1xh100`),
355m and 774m one 8-GPU H100 host (`8xh100`), 1.5b one 8-GPU H200 host (`8xh200`); the
paper's batch is the global batch, in as many micro-batches as that hardware needs.
"""

from plm_jax.configlib import make_config, paper_recipes, parse_arg, sized_for

# 1024-token contexts, 512 sequences a step (the batch of the GPT-2 paper), lr 6e-4;
# GPT-2's byte-level BPE has 50,257 entries (padded to 50,304 in the model).
PAPER = dict(data=dict(max_seq_length=1024, vocab_size=50257),
             train=dict(steps=600_000, batch_size=512),
             optim=dict(learning_rate=6e-4, warmup_steps=2000))
# Every size: cosine decay to 10%, AdamW with weight decay 0.1, beta2 0.95, eps 1e-8.
OPTIM = dict(schedule="cosine", end_lr_fraction=0.1, weight_decay=0.1, b2=0.95, eps=1e-8)
SIZES = {
    "tiny": dict(model=dict(hidden_size=128, num_layers=2, num_heads=4, mlp_dim=512,
                            max_position=128),
                 data=dict(max_seq_length=64, vocab_size=4096),
                 train=dict(steps=600, batch_size=32),
                 optim=dict(learning_rate=1e-3, warmup_steps=60)),
    # micro-batches: the fewest that fit (`plm-jax plan` on the target proposes them)
    "124m": sized_for("1xh100", accum=8, row=dict(
        model=dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072,
                   max_position=1024), **PAPER)),
    "355m": sized_for("8xh100", accum=4, row=dict(
        model=dict(hidden_size=1024, num_layers=24, num_heads=16, mlp_dim=4096,
                   max_position=1024), **PAPER)),
    "774m": sized_for("8xh100", accum=4, row=dict(
        model=dict(hidden_size=1280, num_layers=36, num_heads=20, mlp_dim=5120,
                   max_position=1024), **PAPER)),
    "1.5b": sized_for("8xh200", accum=4, row=dict(
        model=dict(hidden_size=1600, num_layers=48, num_heads=25, mlp_dim=6400,
                   max_position=1024), **PAPER)),
}

# `<size>-paper`: the GPT-2 paper (Radford et al., 2019) gives the contexts (1024) and the batch
# (512) but not its learning rates ("manually tuned"); these rows take the published recipe of
# the GPT-3 paper's nearest sizes (Brown et al., 2020, Table 2.1 and appendix B): 300B tokens,
# warmup over 375M tokens, cosine decay to 10%, AdamW beta2 0.95, eps 1e-8, weight decay 0.1,
# clipping at 1.0; lr 6e-4 (125M), 3e-4 (350M), 2.5e-4 (760M), 2e-4 (1.3B, batch 1M tokens).
# The 1.5b row's batch of 1024 takes twice its micro-batches on the same H200s.
def _gpt3(lr: float, batch: int, accum: int) -> dict:
  tokens = batch * 1024
  return dict(train=dict(steps=300_000_000_000 // tokens, batch_size=batch),
              optim=dict(learning_rate=lr, warmup_steps=375_000_000 // tokens,
                         grad_accum_steps=accum))


SIZES = paper_recipes(SIZES, {"124m": _gpt3(6e-4, 512, 8), "355m": _gpt3(3e-4, 512, 4),
                              "774m": _gpt3(2.5e-4, 512, 4), "1.5b": _gpt3(2e-4, 1024, 8)})


def get_config(arg=None):
  a = parse_arg(arg, SIZES, "tiny")
  row = SIZES[a["size"]]
  return make_config(family="gpt", size_name=a["size"], mesh=a["mesh"],
                     model={**row["model"], "layer_norm_eps": 1e-5},
                     data=row["data"], train=row["train"], optim={**OPTIM, **row["optim"]})
