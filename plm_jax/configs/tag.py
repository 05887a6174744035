"""Fine-tuning for token tagging (named entities, part of speech). `--config tag:TASK[,mesh=P]`.

TASK is one of plm_jax/finetune/tag/tasks.py TAG_TASKS: conll2003 (TFDS, NER), conll2003_pos, wikiann (TFDS
wikiann/en), xtreme_pos (TFDS xtreme_pos/xtreme_pos_en), conll (local CoNLL files:
--config.finetune.train_path=... and tag.tag_column) or jsonl ({"tokens", "tags"} lines).
The finetune group holds the task, files, epochs and the head's learning rate, the classify
group the tags (its classes), the tag group the CoNLL column; the architecture comes from
`plm-jax finetune --init-from RUN`.
Defaults follow Hugging Face's run_ner.py: 3 epochs, batch 32, lr 5e-5, linear decay.
"""

from plm_jax.configlib import make_config, parse_arg
from plm_jax.finetune.tag.tasks import TAG_TASKS

# A placeholder architecture: replaced by the --init-from run's.
_BODY = dict(hidden_size=128, num_layers=2, num_heads=4, mlp_dim=512, max_position=128,
             layer_norm_eps=1e-12)


def get_config(arg=None):
  a = parse_arg(arg, TAG_TASKS, "conll2003", noun="task")
  return make_config(
      family="bert", objective="tag", size_name="from --init-from", model=_BODY,
      mesh=a["mesh"],
      data=dict(max_seq_length=128, prefetch=2),
      train=dict(steps=0, batch_size=32, log_every=50, eval_every=0),
      optim=dict(learning_rate=5e-5, warmup_steps=0, schedule="linear", weight_decay=0.01),
      finetune=dict(task=a["size"], warmup_fraction=0.0))
