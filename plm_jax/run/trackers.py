"""External experiment trackers: Weights & Biases and MLflow, each off unless its config field
names where to log (train.wandb_project, train.mlflow_tracking_uri).

Both are optional dependencies (`pip install 'plm-jax[wandb]'`, `'plm-jax[mlflow]'`), imported
only when asked for. A run that asks for one that is not installed is refused before it starts
(`check`). Once running, a tracker is a mirror of metrics.jsonl, never the record: if it fails
(the network is down, the server refuses), the run warns once and goes on without it.

A resumed run continues the same tracker run: its id is kept in the workdir. W&B keeps one
value per step and ignores steps it has already seen, so the steps an interrupted run repeats
after its last checkpoint keep their first values there (metrics.jsonl keeps the new ones).
"""

import importlib.util
import os
import time

from plm_jax.errors import ConfigError

WANDB_MODES = ("online", "offline")
WANDB_ID_FILE = "wandb_run_id"
MLFLOW_ID_FILE = "mlflow_run_id"


def check(config) -> None:
  """Refuses a tracker that cannot work here, before anything is built."""
  t = config.train
  if t.wandb_project:
    if t.wandb_mode not in WANDB_MODES:
      raise ConfigError(f"train.wandb_mode={t.wandb_mode!r} is not one of "
                        f"{', '.join(WANDB_MODES)}")
    _require("wandb", "train.wandb_project", "wandb")
  if t.mlflow_tracking_uri:
    _require("mlflow", "train.mlflow_tracking_uri", "mlflow")


def _require(module: str, field: str, extra: str) -> None:
  if importlib.util.find_spec(module) is None:
    raise ConfigError(f"{field} is set but {module} is not installed: pip install "
                      f"'plm-jax[{extra}]' (or drop --config.{field})")


def open_trackers(config, workdir: str, hparams: dict, resume: bool, warn=print) -> list:
  """The trackers the config asks for, started (or resumed) for the run in `workdir`;
  `warn(line)` reports one that fails."""
  t, name = config.train, os.path.basename(os.path.abspath(workdir))
  out = []
  if t.wandb_project:
    out.append(_Guarded("Weights & Biases", warn, lambda: WandbTracker(
        workdir, t.wandb_project, t.wandb_entity, t.wandb_mode, name, hparams, resume)))
  if t.mlflow_tracking_uri:
    out.append(_Guarded("MLflow", warn, lambda: MlflowTracker(
        workdir, t.mlflow_tracking_uri, t.mlflow_experiment, name, hparams, resume)))
  return out


class _Guarded:
  """A tracker whose failures are reported once and then ignored (the run matters more)."""

  def __init__(self, what: str, warn, start):
    self.what, self.warn, self.tracker = what, warn, None
    self.tracker = self._call(start)

  def _call(self, fn):
    try:
      return fn()
    except Exception as e:  # noqa: BLE001 - trackers raise network, auth and server errors
      self.warn(f"warning: {self.what} stopped logging ({type(e).__name__}: "
                f"{' '.join(str(e).split())[:200]}); the run goes on, metrics.jsonl has every "
                "value")
      self.tracker = None
      return None

  def log(self, step: int, split: str, metrics: dict) -> None:
    if self.tracker is not None:
      self._call(lambda: self.tracker.log(step, split, metrics))

  def close(self) -> None:
    if self.tracker is not None:
      self._call(self.tracker.close)
      self.tracker = None


def _saved_id(workdir: str, file: str, resume: bool) -> str | None:
  path = os.path.join(workdir, file)
  if resume and os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      return f.read().strip() or None
  return None


def _save_id(workdir: str, file: str, run_id: str) -> None:
  with open(os.path.join(workdir, file), "w", encoding="utf-8") as f:
    f.write(run_id + "\n")


class WandbTracker:
  """A W&B run: the config as its config, every metric as `split/name` at its step."""

  def __init__(self, workdir, project, entity, mode, name, hparams, resume):
    import wandb  # optional dependency (train.wandb_project)
    run_id = _saved_id(workdir, WANDB_ID_FILE, resume)
    self.run = wandb.init(project=project, entity=entity or None, mode=mode, name=name,
                          dir=workdir, config=hparams, id=run_id, resume="allow",
                          settings=wandb.Settings(silent=True, console="off"))
    _save_id(workdir, WANDB_ID_FILE, self.run.id)

  def log(self, step: int, split: str, metrics: dict) -> None:
    self.run.log({f"{split}/{k}": v for k, v in metrics.items()}, step=step)

  def close(self) -> None:
    self.run.finish()


class MlflowTracker:
  """An MLflow run: the config as its parameters, every metric as `split/name` at its step."""

  def __init__(self, workdir, uri, experiment, name, hparams, resume):
    import mlflow  # optional dependency (train.mlflow_tracking_uri)
    self.client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    run_id = _saved_id(workdir, MLFLOW_ID_FILE, resume)
    if run_id is None:
      found = self.client.get_experiment_by_name(experiment)
      experiment_id = (found.experiment_id if found is not None
                       else self.client.create_experiment(experiment))
      run_id = self.client.create_run(experiment_id, run_name=name).info.run_id
      # MLflow keeps parameter values as text of at most 6000 characters
      params = [mlflow.entities.Param(k, str(v)[:6000]) for k, v in hparams.items()]
      self.client.log_batch(run_id, params=params)
    else:
      self.client.update_run(run_id, status="RUNNING")
    _save_id(workdir, MLFLOW_ID_FILE, run_id)
    self.run_id, self._metric = run_id, mlflow.entities.Metric

  def log(self, step: int, split: str, metrics: dict) -> None:
    now = int(time.time() * 1000)
    self.client.log_batch(self.run_id, metrics=[
        self._metric(f"{split}/{k}", float(v), now, step) for k, v in metrics.items()])

  def close(self) -> None:
    self.client.set_terminated(self.run_id)
