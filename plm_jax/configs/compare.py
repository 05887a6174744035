"""Comparing the families at matched compute (`plm-jax compare`). `--config compare:SIZE`.

Each selected family is pretrained from its own preset (`sizes`: the family's SIZE argument) on
the same corpus, with the same vocabulary size, batch and sequence length (`pretrain`), for as
many steps as `match` allows: the same model FLOPs (plm_jax/flops.py's convention, as `plan`
and `bench` count them), or the same tokens. The budget is `budget` (FLOPs or tokens), or when 0
what `reference_family` spends in `reference_steps` steps. Every family then fine-tunes on the
same `finetune.tasks` (classification tasks of plm_jax/tasks.py) with the same seeds.

Tokenizers: each family trains its own kind (WordPiece, byte-level BPE, Unigram: the special
tokens and pair layouts its pretraining objective expects) on the same corpus with the same
vocabulary size; one tokenizer for all would change what e.g. RoBERTa or XLNet is.

`tiny` runs all five families on 2 CPU cores in 8 to 15 minutes; `smoke` is two families and a
handful of steps (CI); `base` is sized for one H100/H200 (`topology`: plan's estimate is printed
first) and times each family with `bench`.
"""

import ml_collections

from plm_jax.configlib import parse_arg

FAMILIES = ["bert", "roberta", "albert", "gpt", "xlnet"]
# not SIZES: these are setups of a comparison, not model sizes (plan sizes every SIZES row)
SETUPS = {
    "tiny": dict(families=FAMILIES, size="tiny", seeds=[0, 1], reference_steps=150,
                 pretrain=dict(batch_size=16, max_seq_length=64, vocab_size=2048, eval_steps=4,
                               log_every=10),
                 finetune=dict(tasks=["builtin"], steps=60, batch_size=16, max_seq_length=64,
                               learning_rate=1e-3, eval_every=0),
                 bench="off", topology="", devices=1),
    "smoke": dict(families=["bert", "gpt"], size="tiny", seeds=[0], reference_steps=3,
                  pretrain=dict(batch_size=8, max_seq_length=32, vocab_size=1024, eval_steps=1,
                                log_every=1),
                  finetune=dict(tasks=["builtin"], steps=2, batch_size=8, max_seq_length=32,
                                learning_rate=1e-3, eval_every=0),
                  bench="off", topology="", devices=1),
    "base": dict(families=FAMILIES, size={**{f: "base" for f in FAMILIES}, "gpt": "124m"},
                 seeds=[0, 1, 2], reference_steps=100_000,
                 pretrain=dict(batch_size=256, max_seq_length=128, vocab_size=30522,
                               eval_steps=50, log_every=100),
                 finetune=dict(tasks=["sst2", "mrpc", "rte"], steps=0, batch_size=32,
                               max_seq_length=128, learning_rate=2e-5, eval_every=0),
                 bench="time", topology="1xh100"),
}


def get_config(arg=None):
  a = parse_arg(arg, SETUPS, "tiny", noun="setup")
  row = SETUPS[a["size"]]
  c = ml_collections.ConfigDict()
  c.name = a["size"]
  c.families = list(row["families"])           # the order of the report's rows
  # the preset argument each family is pretrained from (its own config file's SIZE)
  c.sizes = (dict(row["size"]) if isinstance(row["size"], dict)
             else {family: row["size"] for family in FAMILIES})
  c.mesh = a["mesh"]
  # devices each run uses (0 = all): many small runs one after another waste less time in
  # compiling for a mesh of one device than of several (the CI smoke runs on one of eight)
  c.devices = row.get("devices", 0)
  c.seeds = list(row["seeds"])                 # each (family, stage) runs once per seed
  c.match = "flops"                            # flops | tokens: what every family spends alike
  c.budget = 0.0                               # FLOPs or tokens; 0 = the reference's
  c.reference_family = "bert"
  c.reference_steps = row["reference_steps"]
  c.corpus = "builtin"                         # data.source of every pretraining run
  c.pretrain = ml_collections.ConfigDict(row["pretrain"])
  c.pretrain.learning_rate = 0.0               # 0 = each preset's own
  c.finetune = ml_collections.ConfigDict(row["finetune"])
  c.finetune.epochs = 3.0                      # used when finetune.steps = 0
  c.bench = row["bench"]                       # off | compile (memory) | time (+ tokens/s)
  c.topology = row["topology"]                 # plan's estimate before starting ("" = none)
  c.plan_only = False                          # print the estimate (and budget) and stop
  return c
