"""Extractive question answering. `--config qa:TASK[,mesh=PRESET]`.

TASK is one of plm_jax/finetune/qa/tasks.py: squad (TFDS squad/v1.1), squad_v2 (TFDS squad/v2.0, with
unanswerable questions), json / json_v2 (local SQuAD-format files:
--config.finetune.train_path=train.json, eval_path, test_path). The model's architecture comes
from `plm-jax finetune --init-from RUN` (BERT, RoBERTa, ALBERT or XLNet); only the fields of
plm_jax.finetune.run.RUNTIME_MODEL_FIELDS are set here. Defaults follow BERT's SQuAD recipe as
transformers' run_qa.py gives it: 384-token windows 128 tokens apart, questions of at most 64
tokens, answers of at most 30, lr 3e-5, 2 epochs, batch 32, 10% warmup, linear decay.
"""

from plm_jax.configlib import make_config, parse_arg
from plm_jax.finetune.qa.tasks import QA_TASKS

# A placeholder architecture: replaced by the --init-from run's.
_BODY = dict(hidden_size=128, num_layers=2, num_heads=4, mlp_dim=512, max_position=512,
             layer_norm_eps=1e-12)


def get_config(arg=None):
  a = parse_arg(arg, QA_TASKS, "squad", noun="task")
  return make_config(
      family="bert", objective="qa", size_name="from --init-from", model=_BODY,
      mesh=a["mesh"],
      data=dict(max_seq_length=384, prefetch=2),
      train=dict(steps=0, batch_size=32, log_every=50, eval_every=0),
      optim=dict(learning_rate=3e-5, warmup_steps=0, schedule="linear", weight_decay=0.01),
      finetune=dict(task=a["size"], epochs=2.0, metric="f1"),
      groups={"qa": dict(max_query_length=64, doc_stride=128, max_answer_length=30,
                         n_best=20)})
