"""Generation fine-tuning of a GPT (prompt -> completion). `--config seq2seq:TASK[,mesh=PRESET]`.

TASK is one of plm_jax/finetune/seq2seq/tasks.py: wmt14_de_en, wmt14_en_de (TFDS wmt14_translate/de-en),
cnn_dailymail, xsum (TFDS), or jsonl / tsv (local files: --config.finetune.train_path=... and
the field names). The whole GPT language model is fine-tuned, no new head: its architecture and
weights come from `plm-jax finetune --init-from RUN` (a GPT pretraining run or an imported
GPT-2); only plm_jax.finetune.run.RUNTIME_MODEL_FIELDS are set here. Defaults: 3 epochs of
packed rows, batch 32, lr 1e-4 with 10% warmup and linear decay, greedy decoding of 256
validation prompts at each evaluation (once per epoch).
"""

from plm_jax.configlib import make_config, parse_arg
from plm_jax.finetune.seq2seq.tasks import TASKS

# A placeholder architecture: replaced by the --init-from run's.
_BODY = dict(hidden_size=128, num_layers=2, num_heads=4, mlp_dim=512, max_position=1024,
             layer_norm_eps=1e-5)


def get_config(arg=None):
  a = parse_arg(arg, TASKS, "jsonl", noun="task")
  return make_config(
      family="gpt", objective="seq2seq", size_name="from --init-from", model=_BODY,
      mesh=a["mesh"],
      data=dict(max_seq_length=TASKS[a["size"]].max_seq_length, prefetch=2),
      train=dict(steps=0, batch_size=32, log_every=50, eval_every=0),
      optim=dict(learning_rate=1e-4, warmup_steps=0, schedule="linear", weight_decay=0.01),
      finetune=dict(task=a["size"]))
