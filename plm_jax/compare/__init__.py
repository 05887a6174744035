"""`plm-jax compare`: the families pretrained at matched compute, fine-tuned on the same tasks
with the same seeds, and one report (DIR/report.md and its PNGs) of what was measured: the
budget (budget.py), the stages (stages.py) and the report (report.py).

Layout of DIR (each stage its own workdir, so a rerun continues what is unfinished):
  tasks/<task>/<split>.json[l]      the built-in downstream tasks (data/builtin_tasks.py)
  <family>/seed<k>/pretrain/        a `plm-jax train` workdir
  <family>/seed<k>/<task>/          a `plm-jax finetune` workdir initialised from pretrain/
  <family>/bench/                   `bench` of the family's pretraining config (config.bench)
  report.md, plots/*.png            rewritten from the stages' results at every run
A stage that finished holds RESULT_FILE (written last); a rerun skips it and reads it back.

The budget: match="flops" gives every family the same FLOPs as its step computes them
(flops.computed_flops_per_step, the one convention `plan` and `bench` use too), match="tokens"
the same tokens; train.steps = round(budget / per-step cost), at least 1. match="params" sizes
each family's width to the same parameter count (param_match.py) and trains all on the
reference's tokens.
"""

import os

from plm_jax.compare.budget import family_config, plan_budget, pretrain_config
from plm_jax.compare.report import (Measure, bootstrap_p, mean_std, strengths_and_weaknesses,
                                    welch_p, write_report)
from plm_jax.compare.stages import (baseline, downstream_result, normalise, read_result,
                                    run_all, validate)
from plm_jax.run.metrics_writer import console

__all__ = ["Measure", "baseline", "bootstrap_p", "compare", "downstream_result", "family_config", "mean_std",
           "plan_budget", "pretrain_config", "read_result", "strengths_and_weaknesses",
           "welch_p"]


def compare(c, workdir: str) -> dict:
  """Runs (or continues) the comparison of config `c` in `workdir`; writes its report."""
  normalise(c)
  validate(c)
  os.makedirs(workdir, exist_ok=True)
  results = run_all(c, workdir)
  if results is None:
    return {}
  report = write_report(c, workdir, results)
  console(f"compare: report {report}")
  return results
