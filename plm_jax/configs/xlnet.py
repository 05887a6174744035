"""XLNet pretraining (permutation LM). `--config xlnet:SIZE[,mesh=PRESET]`.

Shapes follow Yang et al. (2019) and the released xlnet-base / xlnet-large; `tiny` is for tests
and the CPU demo. Every size trains as the paper did, except for its bidirectional data
(`bi_data`: half of each batch read backwards), which plm-jax does not implement: segments of T
tokens whose first T/2 are
kept as the next segment's memory, mem_len 3T/4, spans of up to 5 words in contexts of 6 tokens
per word, the last 1/K = 1/6 of each factorisation order predicted, a SentencePiece-style
Unigram vocabulary, dropout and attention dropout 0.1.

`large` (and its name `large-paper`) is the paper's recipe (Yang et al., 2019, appendix A.3, Table 7): 500K steps of 8192
sequences of 512 tokens (4096 rows of objective.plm_segments = 2 consecutive segments: the
paper's tokens per step, each second segment attending to the first's memory), Adam(W) lr 4e-4, 40K warmup steps, linear decay, eps 1e-6, weight decay
0.01. The paper gives no full recipe for `base`; it takes the same settings with BERT-Base's
batch of 256 sequences (128 rows of two segments; the base ablations of section 3.2 match
BERT's data and compute).

Each row's `target` (configlib.sized_for) is the hardware it is sized for: base one 8-GPU H100
host (`--topology 8xh100`), large a TPU v5p-128 (`v5p-128`; the paper used 512 TPU v3 chips),
its 4096 rows in 8 micro-batches. `tiny` is for tests and the CPU demo (any one device).
"""

from plm_jax.configlib import make_config, paper_recipes, parse_arg, sized_for

# 32,000-entry SentencePiece vocabulary, as the released models. A row holds plm_segments = 2
# sequences: 4096 rows are the paper's 8192 sequences a step.
PAPER = dict(data=dict(max_seq_length=512, vocab_size=32000),
             train=dict(steps=500_000, batch_size=4096, log_every=50),
             optim=dict(learning_rate=4e-4, warmup_steps=40_000))
SIZES = {
    "tiny": dict(model=dict(hidden_size=128, num_layers=2, num_heads=4, mlp_dim=512,
                            max_position=128, mem_len=48),
                 data=dict(max_seq_length=64, vocab_size=4096),
                 train=dict(steps=600, batch_size=32, log_every=100),
                 optim=dict(learning_rate=1e-3, warmup_steps=60)),
    "base": sized_for("8xh100", dict(
        model=dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072,
                   max_position=512, mem_len=384),
        **{**PAPER, "train": dict(steps=500_000, batch_size=128, log_every=50)})),
    "large": sized_for("v5p-128", accum=8, row=dict(
        model=dict(hidden_size=1024, num_layers=24, num_heads=16, mlp_dim=4096,
                   max_position=512, mem_len=384), **PAPER)),
}

SIZES = paper_recipes(SIZES, {"large": {}})


def get_config(arg=None):
  a = parse_arg(arg, SIZES, "tiny")
  row = SIZES[a["size"]]
  config = make_config(family="xlnet", size_name=a["size"], mesh=a["mesh"],
                       model={**row["model"], "layer_norm_eps": 1e-12},
                       data={**row["data"], "lowercase": False},
                       train=row["train"], optim={**row["optim"], "weight_decay": 0.01})
  return config          # reuse_len T/2, spans of 5 words, attention dropout: make_config
