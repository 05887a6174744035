"""`plm-jax finetune --config classify:TASK`: a pretrained body + a new classification head (or
a regression head: one output), trained on a task (plm_jax/finetune/run.py runs it); `plm-jax
evaluate` of a classifier."""

import time

from plm_jax import workdir as workdirs
from plm_jax.errors import ConfigError
from plm_jax.finetune.classify import data as cdata
from plm_jax.finetune.classify.tasks import task_of
from plm_jax.finetune.predict import (SPLITS, Predictor, prepared_split, split_report, test_report,
                                      write_eval_result)
from plm_jax.finetune.run import (Kind, body_and_new_head, refuse_other_data, resolve_schedule,
                                  start_config)
from plm_jax.inference import load_params
from plm_jax.run import checkpoint
from plm_jax.run.metrics_writer import console, format_metrics


def load_task_data(config, tokenizer, workdir: str, found: workdirs.Found) -> cdata.ClassifyData:
  """The task's splits; sets the classes and the schedule (epochs -> steps) in `config`."""
  t0 = time.time()
  data = cdata.load(config, tokenizer)
  with config.unlocked():
    config.classify.num_classes = data.num_classes
    config.classify.label_names = data.label_names
  refuse_other_data(config, workdir, found)
  resolve_schedule(config, cdata.split_size(data.splits[cdata.TRAIN]))
  sizes = {s: cdata.split_size(a) for s, a in data.splits.items()}
  classes = f"{data.num_classes} classes" if data.num_classes > 1 else "regression"
  console(f"data: {config.classify.task} ({', '.join(data.descriptions.values())}): "
          + ", ".join(f"{n:,} {s}" for s, n in sizes.items())
          + f" examples of {config.data.max_seq_length} tokens; {classes}; skipped "
          + ", ".join(f"{data.skipped[s]} {s}" for s in sizes) + "; truncated "
          + ", ".join(f"{data.truncated[s]} {s}" for s in sizes) + f"; {time.time() - t0:.1f}s")
  return data


def evaluate_classifier(workdir: str, step: int | None = None, best: bool = False,
                        split: str = "validation", devices=None, config=None) -> dict:
  """Every metric of a fine-tuned checkpoint (the latest, `step`, or the best) on a split."""
  if split not in SPLITS:
    raise ConfigError(f"--split {split!r} is not one of {sorted(SPLITS)}")
  subdir = checkpoint.BEST_DIR if best else checkpoint.CHECKPOINT_DIR
  loaded = load_params(workdir, step, devices, config=config, subdir=subdir)
  data = cdata.load(loaded.config, loaded.tokenizer)
  if SPLITS[split] not in data.splits:
    raise ConfigError(f"the task {loaded.config.classify.task!r} has no {split} split here")
  pred = Predictor(loaded.trainer).split(loaded.params, loaded.config, data, SPLITS[split])
  report = split_report(pred, data.num_classes == 1, data.labeled[SPLITS[split]])
  console(f"{split} of {workdir} @ step {loaded.step}{' (best)' if best else ''}: "
          + format_metrics(report, loaded.trainer.objective.eval_keys))
  return write_eval_result(workdir, loaded.step, split, best, report)


def _labels_line(data) -> tuple[str, ...]:
  if data.num_classes <= 1:
    return ()
  return ("labels: " + ", ".join(f"{i} = {name or i}" for i, name in enumerate(
      data.label_names or [""] * data.num_classes)),)


CLASSIFICATION = Kind(
    name="classify",
    evaluate=evaluate_classifier,
    start_config=start_config,
    load=load_task_data,
    metric=lambda config, data: task_of(config).metric,
    prepared=lambda data, tokenizer: prepared_split(data, cdata.EVAL),
    init=lambda trainer, config, devices: body_and_new_head(trainer, config.classify.init_from,
                                                            devices),
    what=lambda config, data, metric: (
        f"{config.model.family} {config.model.size} classifier with {data.num_classes} "
        f"output(s); {config.train.steps} steps ({config.classify.epochs:g} epochs), best by "
        f"{metric}"),
    predictor=Predictor,
    report=lambda predictor, params, batches, config, tokenizer, data: split_report(
        predictor(params, batches), data.num_classes == 1, True),
    final=lambda workdir, config, trainer, predictor, tokenizer, data, best_step, metric:
        test_report(workdir, config, trainer, predictor, data, best_step, metric),
    start_lines=_labels_line)
