"""Fine-tuning for sequence classification. `--config classify:TASK[,mesh=PRESET]`.

TASK is one of plm_jax/finetune/classify/tasks.py: cola, sst2, mrpc, qqp, stsb (regression), mnli,
mnli_mismatched, qnli, rte, wnli (TFDS glue/*), imdb (TFDS imdb_reviews), csv / jsonl (local
files: --config.finetune.train_path=... and the column names), or builtin (no download). The
model's architecture comes from `plm-jax finetune --init-from RUN`; only the fields of
plm_jax.finetune.run.RUNTIME_MODEL_FIELDS (dropout, dtype, attention kernel, remat) are set here.
Defaults follow Devlin et al. (2018): 3 epochs, batch 32, lr 2e-5, 10% warmup, linear decay.
"""

from plm_jax.configlib import make_config, parse_arg
from plm_jax.finetune.classify.tasks import TASKS

# A placeholder architecture: replaced by the --init-from run's.
_BODY = dict(hidden_size=128, num_layers=2, num_heads=4, mlp_dim=512, max_position=128,
             layer_norm_eps=1e-12)


def get_config(arg=None):
  a = parse_arg(arg, TASKS, "builtin", noun="task")
  return make_config(
      family="bert", objective="classify", size_name="from --init-from", model=_BODY,
      mesh=a["mesh"],
      data=dict(max_seq_length=128, prefetch=2),
      train=dict(steps=0, batch_size=32, log_every=50, eval_every=0),
      optim=dict(learning_rate=2e-5, warmup_steps=0, schedule="linear", weight_decay=0.01),
      finetune=dict(task=a["size"]))
