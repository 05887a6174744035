"""The kind registry: every kind of fine-tuning, one entry each, keyed by the objective its
configs name. The commands ask the registry which kind a config or a workdir holds instead of
comparing objective names.

Adding a kind: its sub-package finetune/<kind>/ (tasks.py, data.py, metrics.py, and run.py with
its `Kind`), one entry here, its preset in plm_jax/configs/, its config group in configlib.py and
its objective in plm_jax/objectives/ (README: "Layout of the code").
"""

from plm_jax.finetune.classify.run import CLASSIFICATION
from plm_jax.finetune.qa.run import QUESTION_ANSWERING
from plm_jax.finetune.run import Kind
from plm_jax.finetune.seq2seq.run import GENERATION
from plm_jax.finetune.tag.run import TAGGING

KINDS: dict[str, Kind] = {k.name: k for k in (CLASSIFICATION, TAGGING, QUESTION_ANSWERING,
                                              GENERATION)}
DEFAULT = CLASSIFICATION          # `plm-jax finetune` of a config that names no kind


def of(config) -> Kind | None:
  """The kind of fine-tuning `config` describes; None for a pretraining config."""
  return KINDS.get(config.objective.name)


def finetune(config, workdir: str, init_from: str | None = None, devices=None) -> dict:
  """`plm-jax finetune`: the config's kind (classification unless it names another) fine-tunes,
  or resumes fine-tuning in `workdir`; returns the final report."""
  return (of(config) or DEFAULT).finetune(config, workdir, init_from, devices)
