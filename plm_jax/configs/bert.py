"""BERT pretraining (MLM + NSP). `--config bert:SIZE[,mesh=PRESET]`.

Sizes follow Devlin et al. (2018); `tiny` is for tests and the CPU demo (any one device). Each
row of SIZES gives the model's shape and the data / train / optim values of that size, and the
hardware it is sized for (`target`, configlib.sized_for): mini and base one H100 (`--topology
1xh100`), large one 8-GPU H100 host (`8xh100`); the paper's batch fits there whole.
"""

from plm_jax.configlib import apply_extra, make_config, paper_recipes, parse_arg, sized_for

# The paper's recipe: 1M steps of 256 sequences of 128 tokens, lr 1e-4 after 10k warmup steps;
# the published models use a 30,522-entry uncased WordPiece vocabulary.
PAPER = dict(data=dict(max_seq_length=128, vocab_size=30522),
             train=dict(steps=1_000_000, batch_size=256, log_every=50),
             optim=dict(learning_rate=1e-4, warmup_steps=10_000))
SIZES = {
    "tiny": dict(model=dict(hidden_size=128, num_layers=2, num_heads=4, mlp_dim=512,
                            max_position=128),
                 data=dict(max_seq_length=64, vocab_size=4096),
                 train=dict(steps=1500, batch_size=32, log_every=100),
                 optim=dict(learning_rate=1e-3, warmup_steps=60)),
    "mini": sized_for("1xh100", dict(
        model=dict(hidden_size=256, num_layers=4, num_heads=4, mlp_dim=1024,
                   max_position=512), **PAPER)),
    "base": sized_for("1xh100", dict(
        model=dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072,
                   max_position=512), **PAPER)),
    "large": sized_for("8xh100", dict(
        model=dict(hidden_size=1024, num_layers=24, num_heads=16, mlp_dim=4096,
                   max_position=512), **PAPER)),
}
# `base-paper`, `large-paper`: Devlin et al. (2018), appendix A.2 and the reference
# optimization.py: 1M steps of 256 sequences, Adam(W) lr 1e-4 (beta2 0.999, eps 1e-6, weight
# decay 0.01), 10k warmup steps, linear decay counted from step 0 ("linear_total"), dropout and
# attention dropout 0.1 (the released bert_config.json's attention_probs_dropout_prob).
# Two phases in the one run (plm_jax/data/phases.py): 90% of the steps at 128 tokens and 20
# predictions a sequence, the last 10% at 512 tokens and 80 (the reference
# create_pretraining_data.py's max_predictions_per_seq; 15% of 512 would be 77), the decay over
# all 1M steps.
RECIPE = dict(optim=dict(schedule="linear_total", b2=0.999, eps=1e-6, weight_decay=0.01),
              data=dict(phase2_seq_length=512, phase2_from=0.9),
              extra={"model.attention_dropout_rate": 0.1,
                     "objective.max_predictions": 20, "objective.phase2_max_predictions": 80})
# base is sized for one H100: phase 2's 256 x 512 tokens fit there in 4 micro-batches (large's
# on 8 GPUs in one)
SIZES = paper_recipes(SIZES, {"base": {**RECIPE, "optim": {**RECIPE["optim"],
                                                           "phase2_grad_accum_steps": 4}},
                              "large": RECIPE})


def get_config(arg=None):
  a = parse_arg(arg, SIZES, "tiny")
  row = SIZES[a["size"]]
  return apply_extra(make_config(family="bert", size_name=a["size"], mesh=a["mesh"],
                                 model={**row["model"], "layer_norm_eps": 1e-12},
                                 data=row["data"], train=row["train"], optim=row["optim"]), row)
