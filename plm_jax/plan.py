"""`plm-jax plan`: what a config needs on a topology, without the hardware.

The mesh is built from fake devices of the named topology (plm_jax/topology.py) with the same
code as a real run, the model and optimizer abstractly (no parameter is allocated), and the
figures come from the PartitionSpecs the run would use:

- parameters, gradients and optimizer state per device: each tensor's shard (its dimensions
  divided by the mesh axes its spec names, rounded up as XLA pads), times its dtype's size;
- activations per device: Korthikanti et al. (2022), "Reducing Activation Recomputation in Large
  Transformer Models", per layer s*b*h*(10 + 24/t + 5*a*s/(h*t)) bytes in 16-bit (b the
  per-device micro-batch, t the tensor-parallel size; the 5as/h attention-score term vanishes
  with the fused cuDNN kernel), doubled in float32; with remat one layer's worth plus each
  layer's input; plus the float32 logits and their gradient. An estimate, not a measurement:
  XLA's fusion and scheduling move it either way.
- FLOPs per step: the model-FLOPs convention of plm_jax/flops.py; the step time at a stated MFU.

A layout that cannot run is refused with the reason: heads or MLP not divisible by tensor, a
batch that does not split, more memory per device than the device has (90% usable).
"""

import dataclasses
import json
import math

import jax
import numpy as np

from plm_jax import accelerator, checks, families, parallel, topology
from plm_jax.data import loader
from plm_jax.errors import ConfigError
from plm_jax.metrics_writer import console
from plm_jax.models.config import padded_vocab
from plm_jax.trainer import AbstractState

GIB = 1024 ** 3
USABLE_FRACTION = 0.9        # XLA keeps some memory for its own workspace and fragmentation


def shard_bytes(shape, dtype, spec, axis_sizes: dict) -> int:
  """Bytes of one device's shard of an array of `shape` under PartitionSpec `spec`."""
  dims = list(shape)
  for d, entry in enumerate(tuple(spec)[:len(dims)]):
    if entry is None:
      continue
    names = entry if isinstance(entry, tuple) else (entry,)
    dims[d] = -(-dims[d] // math.prod(axis_sizes[n] for n in names))
  return int(np.prod(dims, dtype=np.int64)) * np.dtype(dtype).itemsize


def tree_bytes(state, specs, axis_sizes: dict) -> int:
  leaves = jax.tree.leaves(state)
  spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  return sum(shard_bytes(x.shape, x.dtype, s, axis_sizes) for x, s in zip(leaves, spec_leaves))


def activation_bytes(config, micro_batch: int, tensor: int, vocab: int, predictions: int,
                     platform: str) -> int:
  m = config.model
  s, b, h, a, L = (config.data.max_seq_length, micro_batch, m.hidden_size, m.num_heads,
                   m.num_layers)
  per_layer = s * b * h * (10 + 24 / tensor)                   # bytes, 16-bit activations
  dtype = accelerator.compute_dtype(m.dtype, platform)
  width = 1 if dtype in ("bfloat16", "float16") else 2
  layers = (L * 2 * s * b * h + per_layer) if m.remat else L * per_layer
  # The fused kernels keep no scores; the XLA path rematerialises them, so one layer's
  # [B, N, T, T] float32 scores and probabilities exist at a time.
  fused = accelerator.attention_impl(m.attention_impl, platform, dtype) in ("cudnn", "splash")
  scores = 0 if fused else 2 * b * (a / tensor) * s * s * 4
  logits_rows = b * (s if families.get(config.model.family).decoder else predictions)
  if config.objective.loss_chunk > 0:                          # one chunk's logits at a time
    logits_rows = min(logits_rows, config.objective.loss_chunk)
  logits = 2 * logits_rows * -(-vocab // tensor) * 4           # float32 logits + their grad
  return int(layers * width + scores + logits)


@dataclasses.dataclass
class Plan:
  topology: str
  num_devices: int
  num_processes: int
  mesh: dict
  global_batch: int
  per_device_batch: float
  micro_batch: int
  parameters: int
  param_bytes: int
  grad_bytes: int
  opt_bytes: int
  activation_bytes: int
  total_bytes: int
  device_bytes: float
  flops_per_step: float
  mfu: float
  step_time_s: float | None

  def lines(self) -> list[str]:
    g = lambda x: f"{x / GIB:,.2f} GiB"  # noqa: E731
    out = [f"topology {self.topology}: {self.num_devices} devices, {self.num_processes} "
           f"process(es); mesh {self.mesh}",
           f"batch: global {self.global_batch}, per device {self.per_device_batch:g}, "
           f"micro-batch per device {self.micro_batch}",
           f"parameters {self.parameters:,}; per device: params {g(self.param_bytes)}, grads "
           f"{g(self.grad_bytes)}, optimizer state {g(self.opt_bytes)}, activations (estimate) "
           f"{g(self.activation_bytes)}; total {g(self.total_bytes)}"
           + (f" of {g(self.device_bytes)}" if self.device_bytes else ""),
           f"FLOPs per step {self.flops_per_step:.3e}"
           + (f"; step time {self.step_time_s * 1e3:,.1f} ms at MFU {self.mfu:.0%}"
              if self.step_time_s is not None else "; step time: peak FLOP/s unknown")]
    return out


def make_plan(config, topology_name: str | None = None, num_devices: int | None = None,
              mfu: float = 0.4, hbm_gib: float = 0.0, peak_tflops: float = 0.0) -> Plan:
  if (topology_name is None) == (num_devices is None):
    raise ConfigError("give --topology NAME or --devices N (one of them)")
  t = topology.get(topology_name) if topology_name else topology.generic(
      num_devices, hbm_gib, peak_tflops * 1e12)
  if hbm_gib:
    t = dataclasses.replace(t, hbm_bytes=hbm_gib * GIB)
  if peak_tflops:
    t = dataclasses.replace(t, peak_flops=peak_tflops * 1e12)
  if not 0 < mfu <= 1:
    raise ConfigError(f"--mfu {mfu} must be in (0, 1]")
  shape = checks.validate(config, t.num_devices, num_processes=t.num_processes)
  mesh = parallel.make_mesh(shape, topology.fake_devices(t), parallel.dcn_shape(config.mesh))
  axis_sizes = dict(mesh.shape)
  vocab = padded_vocab(config, config.data.vocab_size)
  abstract = AbstractState.of(config, vocab)
  params = tree_bytes(abstract.state["params"], abstract.specs["params"], axis_sizes)
  opt = tree_bytes(abstract.state["opt_state"], abstract.specs["opt_state"], axis_sizes)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.state["params"]))
  data, fsdp, tensor = shape
  accum = config.optim.grad_accum_steps
  per_device = config.train.batch_size / (data * fsdp)
  micro = max(1, config.train.batch_size // (data * fsdp * accum))
  # XLNet's examples are several segments, all of whose activations the backward pass keeps
  rows = loader.segments_per_row(config)
  acts = activation_bytes(config, micro * rows, tensor, vocab,
                          loader.predictions_per_sequence(config), t.platform)
  # Gradients live in the parameters' dtype and sharding (summed in place over micro-batches).
  total = params + params + opt + acts
  m = config.model
  per_token = families.get(m.family).flops_per_token(n_params, vocab=vocab, hidden=m.hidden_size,
                                    layers=m.num_layers, seq_len=config.data.max_seq_length,
                                    max_position=m.max_position)
  step_flops = per_token * config.train.batch_size * config.data.max_seq_length * rows
  step_time = step_flops / (t.num_devices * t.peak_flops * mfu) if t.peak_flops else None
  plan = Plan(topology_name or f"{num_devices} devices", t.num_devices, t.num_processes,
              dict(axis_sizes), config.train.batch_size, per_device, micro, n_params, params,
              params, opt, acts, total, t.hbm_bytes, step_flops, mfu, step_time)
  if t.hbm_bytes and total > USABLE_FRACTION * t.hbm_bytes:
    raise ConfigError(
        f"does not fit: {total / GIB:,.1f} GiB per device (params {params / GIB:,.1f}, grads "
        f"{params / GIB:,.1f}, optimizer {opt / GIB:,.1f}, activations {acts / GIB:,.1f}) > "
        f"{USABLE_FRACTION:.0%} of the device's {t.hbm_bytes / GIB:,.0f} GiB; shard more "
        "(--config.mesh.fsdp), recompute (--config.model.remat=true), use "
        "--config.optim.grad_accum_steps or a smaller --config.train.batch_size")
  return plan


def plan(config, topology_name=None, num_devices=None, mfu=0.4, hbm_gib=0.0,
         peak_tflops=0.0) -> dict:
  p = make_plan(config, topology_name, num_devices, mfu, hbm_gib, peak_tflops)
  for line in p.lines():
    console(line)
  out = dataclasses.asdict(p)
  console(json.dumps(out))
  return out
