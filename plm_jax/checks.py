"""One checks pass: a config against itself and the devices, before anything is built.

Every command that builds a model calls `validate` once, first; nothing is read, compiled or
written before it passes. Each error names the field, the value given and one that works. This
module sits beside the code it protects (the mesh, the data builders, the task table, the
family registry) and imports nothing above them.
"""

import math

import jax

from plm_jax import families, objectives
from plm_jax.hardware import accelerator
from plm_jax.data import phases, pipeline
from plm_jax.errors import ConfigError, DataError
from plm_jax.configlib import KINDS
from plm_jax.objectives.masking import SPANS
from plm_jax.parallel import resolve_mesh_shape
from plm_jax.run import trackers

SCHEDULES = ("linear", "cosine", "constant", "linear_total")
NONFINITE = ("stop", "skip")
PROGRESS_BAR = ("auto", "on", "off")


def validate(config, num_devices: int, num_processes: int | None = None
             ) -> tuple[int, int, int]:
  """Checks `config` against `num_devices` devices of `num_processes` processes (default:
  this run's) and itself; returns the mesh shape (data, fsdp, tensor)."""
  shape = resolve_mesh_shape(config.mesh, num_devices)
  validate_data(config)
  _model(config, shape, num_devices)
  processes = jax.process_count() if num_processes is None else num_processes
  _batch(config, shape, processes)
  if phases.enabled(config):                    # phase 2's micro-batches split too
    _batch(phases.phase_config(config, 2), shape, processes)
  _schedule(config)
  if num_processes is None:                     # a run here (not a plan for another machine)
    _kernels_here(config)
    trackers.check(config)                      # W&B / MLflow asked for, and installed here
  return shape


def _kernels_here(config) -> None:
  """A kernel named explicitly must exist on this machine's devices."""
  m, here = config.model, accelerator.platform()
  if m.attention_impl == "cudnn" and here != "gpu":
    raise ConfigError(f"model.attention_impl='cudnn' needs an NVIDIA GPU and this run has {here} "
                      "devices; use --config.model.attention_impl=auto")
  if m.attention_impl == "splash" and here != "tpu":
    raise ConfigError(f"model.attention_impl='splash' is the TPU kernel and this run has {here} "
                      "devices (elsewhere it would run in Pallas interpret mode, a slow "
                      "reference); use --config.model.attention_impl=auto")


def validate_data(config) -> None:
  """What the data commands (tokenizer, prepare, bench) need of a config: the family, the
  objective and its builder, a sequence the model can take; no mesh (they run anywhere)."""
  _objective(config)
  m = config.model
  if config.data.max_seq_length > m.max_position:
    raise ConfigError(f"data.max_seq_length={config.data.max_seq_length} exceeds "
                      f"model.max_position={m.max_position}; lower it or raise max_position")
  _phases(config)


def _phases(config) -> None:
  """A second phase (plm_jax/data/phases.py): pretraining, a length the model takes, a switch
  that leaves steps to both phases."""
  if not phases.enabled(config):
    return
  d, m, steps = config.data, config.model, config.train.steps
  if config.objective.name in KINDS:
    raise ConfigError("data.phase2_seq_length is for pretraining (fine-tuning reads examples of "
                      "one length); use --config.data.phase2_seq_length=0")
  if objectives.get(config.objective.name).permuted:
    raise ConfigError("data.phase2_seq_length: XLNet's segments (objective.reuse_len) are sized "
                      "for one length; use --config.data.phase2_seq_length=0")
  if d.phase2_seq_length > m.max_position:
    raise ConfigError(f"data.phase2_seq_length={d.phase2_seq_length} exceeds "
                      f"model.max_position={m.max_position}; lower it or raise max_position")
  if not 0 < d.phase2_from < 1:
    raise ConfigError(f"data.phase2_from={d.phase2_from:g} must be in (0, 1): the fraction of "
                      "train.steps before phase 2 (BERT's 0.9)")
  switch = phases.switch_step(config)
  if steps > 0 and not 0 < switch < steps:
    raise ConfigError(f"data.phase2_from={d.phase2_from:g} of train.steps={steps} leaves "
                      f"{'phase 1' if switch <= 0 else 'phase 2'} no step; raise train.steps "
                      "or use --config.data.phase2_seq_length=0 for one phase")
  if config.objective.phase2_max_predictions < 0:
    raise ConfigError(f"objective.phase2_max_predictions={config.objective.phase2_max_predictions}"
                      " must be >= 0 (0: 15% of data.phase2_seq_length)")


def _objective(config) -> None:
  family = families.get(config.model.family)
  name = config.objective.name
  if name in KINDS:                     # fine-tuning: the finetune group and the kind's own
    KINDS[name].validate(config)
    return
  if name not in family.objectives:
    raise ConfigError(f"objective.name={name!r} does not fit model.family={family.name!r}; use "
                      f"--config.objective.name={family.objectives[0]}")
  try:
    pipeline.check_builder(config)      # data.builder must build that objective
  except DataError as e:
    raise ConfigError(str(e)) from None
  if objectives.get(name).permuted:
    _permutation(config)


def _permutation(config) -> None:
  """XLNet's segments: a reused part, then A <sep> B <sep> <cls> with room for A and B."""
  o, t = config.objective, config.data.max_seq_length
  if not 0 <= o.reuse_len <= t - 5:
    raise ConfigError(f"objective.reuse_len={o.reuse_len} must be in [0, {t - 5}] (the rest of "
                      f"a {t}-token segment holds A <sep> B <sep> <cls>); XLNet used "
                      f"{t // 2}: --config.objective.reuse_len={t // 2}")
  for field in ("plm_k", "plm_segments", "span_alpha", "span_beta"):
    if o[field] < 1:
      raise ConfigError(f"objective.{field}={o[field]} must be >= 1")
  if config.model.mem_len < 0:
    raise ConfigError(f"model.mem_len={config.model.mem_len} must be >= 0 (0: no memory)")


def _model(config, shape, num_devices: int) -> None:
  m = config.model
  tensor = shape[2]
  if m.hidden_size % m.num_heads:
    raise ConfigError(f"model.hidden_size={m.hidden_size} is not divisible by model.num_heads="
                      f"{m.num_heads}")
  if m.num_heads % tensor:
    ok = [d for d in range(1, tensor + 1) if m.num_heads % d == 0 and num_devices % d == 0]
    raise ConfigError(f"model.num_heads={m.num_heads} is not divisible by mesh.tensor={tensor}; "
                      f"use --config.mesh.tensor={max(ok)}")
  if m.mlp_dim % tensor:
    raise ConfigError(f"model.mlp_dim={m.mlp_dim} is not divisible by mesh.tensor={tensor}")
  if m.param_dtype not in accelerator.DTYPES:
    raise ConfigError(f"model.param_dtype={m.param_dtype!r} is not one of "
                      f"{', '.join(accelerator.DTYPES)}")
  accelerator.compute_dtype(m.dtype)             # each raises for a value it does not know
  accelerator.attention_impl(m.attention_impl)
  if m.attention_impl == "cudnn" and m.dtype == "float32":
    raise ConfigError("model.attention_impl='cudnn' needs 16-bit compute (cuDNN's flash kernel "
                      "takes bfloat16 or float16); use --config.model.dtype=bfloat16, or "
                      "attention_impl=auto")
  if config.objective.loss_chunk < 0:
    raise ConfigError(f"objective.loss_chunk={config.objective.loss_chunk} must be >= 0 "
                      "(0: the output layer in one chunk)")


def _batch(config, shape, processes: int) -> None:
  data, fsdp, _ = shape
  accum, batch = config.optim.grad_accum_steps, config.train.batch_size
  if accum < 1:
    raise ConfigError(f"optim.grad_accum_steps={accum} must be >= 1")
  unit = math.lcm(data * fsdp * accum, processes * accum)   # every process feeds whole rows
  if batch <= 0:
    raise ConfigError(f"train.batch_size={batch} must be positive; use "
                      f"--config.train.batch_size={unit} (or a multiple of it)")
  if batch % unit:
    good = -(-batch // unit) * unit      # the next multiple up
    raise ConfigError(
        f"train.batch_size={batch} is not divisible by {unit} (mesh.data x mesh.fsdp "
        f"x optim.grad_accum_steps = {data}x{fsdp}x{accum}, over {processes} process(es)); "
        f"use --config.train.batch_size={good}")


def _schedule(config) -> None:
  t = config.train
  if t.steps < 0 or config.checkpoint.every <= 0 or config.checkpoint.keep <= 0:
    raise ConfigError("train.steps must be >= 0, checkpoint.every and checkpoint.keep > 0")
  if t.nonfinite not in NONFINITE:
    raise ConfigError(f"train.nonfinite={t.nonfinite!r} is not one of {', '.join(NONFINITE)}")
  if t.max_consecutive_skips < 0 or t.step_timeout_s < 0 or config.checkpoint.every_seconds < 0:
    raise ConfigError("train.max_consecutive_skips, train.step_timeout_s and "
                      "checkpoint.every_seconds must be >= 0")
  if t.spike_factor != 0 and t.spike_factor <= 1:
    raise ConfigError(f"train.spike_factor={t.spike_factor} must be > 1 (or 0 = off); e.g. "
                      "--config.train.spike_factor=100")
  accelerator.prng_impl(t.prng_impl)             # raises for a value it does not know
  if t.progress_bar not in PROGRESS_BAR:
    raise ConfigError(f"train.progress_bar={t.progress_bar!r} is not one of "
                      f"{', '.join(PROGRESS_BAR)}")
  if config.optim.optimizer not in ("adamw", "lamb"):
    raise ConfigError(f"optim.optimizer={config.optim.optimizer!r} is not 'adamw' or 'lamb'")
  o = config.objective
  if o.masking not in SPANS:
    raise ConfigError(f"objective.masking={o.masking!r} is not one of {', '.join(SPANS)}")
  if o.max_ngram < 1:
    raise ConfigError(f"objective.max_ngram={o.max_ngram} must be >= 1")
  if config.optim.schedule not in SCHEDULES:
    raise ConfigError(f"optim.schedule={config.optim.schedule!r} is not one of "
                      f"{', '.join(SCHEDULES)}")
