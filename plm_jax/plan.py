"""`plm-jax plan`: what a config needs on a topology, without the hardware.

The mesh is built from fake devices of the named topology (plm_jax/topology.py) with the same
code as a real run, the model and optimizer abstractly (no parameter is allocated), and the
figures come from the PartitionSpecs the run would use:

- parameters, gradients and optimizer state per device: each tensor's shard (its dimensions
  divided by the mesh axes its spec names, rounded up as XLA pads), times its dtype's size;
- activations per device: Korthikanti et al. (2022), "Reducing Activation Recomputation in Large
  Transformer Models", section 4.1, eq. 2: per layer s*b*h*(10 + 24/t + 5*a*s/(h*t)) bytes in
  16-bit (b the per-device micro-batch, t the tensor-parallel size), doubled in float32. The
  5as/h attention-score term vanishes with the fused kernels (cuDNN, splash) and is one
  layer's, rematerialised, on the XLA path; attention dropout (in no fused kernel) and XLNet's
  attention run the explicit softmax, which keeps every layer's scores (float32 softmax output,
  probabilities, dropout mask). XLNet's query stream adds its predicted positions as rows and
  the memory as keys. With remat one layer's worth plus each layer's input; plus the float32
  logits and their gradient (one loss chunk's). An estimate, not a measurement: XLA's fusion
  and scheduling move it either way.
- FLOPs per step: the model-FLOPs convention of plm_jax/flops.py; the step time at a stated MFU.

A layout that cannot run is refused with the reason: heads or MLP not divisible by tensor, a
batch that does not split, more memory per device than the device has (90% usable); and with
the values that fit, if the search of `proposals` finds any (the same estimate, applied to
more micro-batches, remat, a wider fsdp axis).
"""

import copy
import dataclasses
import json
import math

import jax
import numpy as np

from plm_jax import accelerator, checks, families, parallel, topology
from plm_jax.data import loader
from plm_jax.errors import ConfigError
from plm_jax.run.metrics_writer import console
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
  plm = config.objective.name == "plm"
  # XLNet runs two streams through every layer: the content stream over the s tokens and the
  # query stream over the predicted positions; its keys also span the previous segment's memory.
  queries, keys = (s + predictions, s + m.mem_len) if plm else (s, s)
  dtype = accelerator.compute_dtype(m.dtype, platform)
  width = 1 if dtype in ("bfloat16", "float16") else 2
  linear = queries * b * h * (10 + 24 / tensor) * width        # Korthikanti's 34sbh (t = 1)
  scores = b * (a / tensor) * queries * keys                   # elements of one layer's scores
  kernel = accelerator.attention_impl(m.attention_impl, platform, dtype)
  if plm or m.attention_dropout_rate > 0:
    # The explicit softmax path (XLNet's attention; attention dropout, which no fused kernel
    # has) keeps each layer's scores for the backward pass: Korthikanti's 5as^2b, with the
    # softmax output in float32 here: 4 bytes, the probabilities in the compute dtype for the
    # value product, and the dropout mask (1 byte).
    kept = scores * (4 + 2 * width + (1 if m.attention_dropout_rate > 0 else 0))
    transient = 0
  else:
    # The fused kernels keep no scores; the XLA path rematerialises them, so one layer's
    # [B, N, T, T] float32 scores and probabilities exist at a time.
    kept = 0
    transient = 0 if kernel in ("cudnn", "splash") else 2 * scores * 4
  # remat keeps each layer's input (2sbh in 16-bit) and recomputes one layer at a time
  layers = (L * 2 * queries * b * h * width + linear + kept) if m.remat else L * (linear + kept)
  logits_rows = b * (s if families.get(config.model.family).decoder else predictions)
  if config.objective.loss_chunk > 0:                          # one chunk's logits at a time
    logits_rows = min(logits_rows, config.objective.loss_chunk)
  logits = 2 * logits_rows * -(-vocab // tensor) * 4           # float32 logits + their grad
  return int(layers + transient + logits)


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


def _topology(topology_name, num_devices, hbm_gib, peak_tflops):
  if (topology_name is None) == (num_devices is None):
    raise ConfigError("give --topology NAME or --devices N (one of them)")
  t = topology.get(topology_name) if topology_name else topology.generic(
      num_devices, hbm_gib, peak_tflops * 1e12)
  if hbm_gib:
    t = dataclasses.replace(t, hbm_bytes=hbm_gib * GIB)
  if peak_tflops:
    t = dataclasses.replace(t, peak_flops=peak_tflops * 1e12)
  return t


def _footprint(config, t, abstract, vocab) -> dict:
  """The layout of `config` on `t` (checked as a run checks it) and its bytes per device."""
  shape = checks.validate(config, t.num_devices, num_processes=t.num_processes)
  mesh = parallel.make_mesh(shape, topology.fake_devices(t), parallel.dcn_shape(config.mesh))
  axis_sizes = dict(mesh.shape)
  params = tree_bytes(abstract.state["params"], abstract.specs["params"], axis_sizes)
  opt = tree_bytes(abstract.state["opt_state"], abstract.specs["opt_state"], axis_sizes)
  data, fsdp, tensor = shape
  micro = max(1, config.train.batch_size // (data * fsdp * config.optim.grad_accum_steps))
  # XLNet's examples are several segments, all of whose activations the backward pass keeps
  acts = activation_bytes(config, micro * loader.segments_per_row(config), tensor, vocab,
                          loader.predictions_per_sequence(config), t.platform)
  # Gradients live in the parameters' dtype and sharding (summed in place over micro-batches).
  return dict(shape=shape, axis_sizes=axis_sizes, micro=micro, params=params, opt=opt,
              acts=acts, total=params + params + opt + acts)


def _fits(footprint, t) -> bool:
  return not t.hbm_bytes or footprint["total"] <= USABLE_FRACTION * t.hbm_bytes


def _with(config, overrides: dict):
  out = copy.deepcopy(config)
  for dotted, value in overrides.items():
    section, field = dotted.split(".")
    out[section][field] = value
  return out


def _try(config, t, abstract, vocab, overrides: dict):
  """`overrides`' footprint if the layout is valid and fits, else None."""
  try:
    f = _footprint(_with(config, overrides), t, abstract, vocab)
  except ConfigError:
    return None
  return f if _fits(f, t) else None


def _divisors(n: int) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0]


def proposals(config, t, abstract, vocab) -> list[tuple[dict, dict]]:
  """The smallest changes, each of one kind, with which `config` is valid on `t` and fits:
  [(overrides, footprint)], same estimate as the plan. Kinds: gradient accumulation (the
  fewest micro-batches the global batch divides into: the effective batch stays), remat (with
  the fewest micro-batches it then needs), and a wider fsdp axis in place of data (the same
  devices; tensor and the DCN sizes kept)."""
  batch, accum = config.train.batch_size, config.optim.grad_accum_steps
  found = []

  def fewest_steps(extra: dict):
    for k in _divisors(batch):
      f = _try(config, t, abstract, vocab, {**extra, "optim.grad_accum_steps": k})
      if f is not None:
        return ({**extra, "optim.grad_accum_steps": k} if k != accum else dict(extra)), f
    return None

  steps = fewest_steps({})
  if steps is not None:
    found.append(steps)
  if not config.model.remat and (steps is None or steps[0]["optim.grad_accum_steps"] > 1):
    remat = fewest_steps({"model.remat": True})
    if remat is not None:
      found.append(remat)
  try:
    data, fsdp, tensor = parallel.resolve_mesh_shape(config.mesh, t.num_devices)
  except ConfigError:
    return found
  dcn_data, dcn_fsdp, _ = parallel.dcn_shape(config.mesh)
  ici = (data // dcn_data) * (fsdp // dcn_fsdp)         # devices of a slice the two axes share
  for ici_fsdp in _divisors(ici):
    if ici_fsdp * dcn_fsdp <= fsdp:
      continue
    mesh = {"mesh.data": ici // ici_fsdp, "mesh.fsdp": ici_fsdp}
    f = _try(config, t, abstract, vocab, mesh)
    if f is not None:
      found.append((mesh, f))
      break
  return found


def _flags(overrides: dict) -> str:
  return " ".join(f"--config.{k}={str(v).lower() if isinstance(v, bool) else v}"
                  for k, v in overrides.items())


def _proposal_text(found) -> str:
  if not found:
    return ("nothing tried fits (gradient accumulation, remat, a wider fsdp axis): use more "
            "devices, devices with more memory, or a smaller model")
  out = []
  for overrides, f in found:
    size = f" ({f['total'] / GIB:,.1f} GiB per device" + (
        f", micro-batch {f['micro']} per device)" if "optim.grad_accum_steps" in overrides
        else ")")
    out.append(_flags(overrides) + size)
  return "fits with " + ", or ".join(out)


def make_plan(config, topology_name: str | None = None, num_devices: int | None = None,
              mfu: float = 0.4, hbm_gib: float = 0.0, peak_tflops: float = 0.0) -> Plan:
  t = _topology(topology_name, num_devices, hbm_gib, peak_tflops)
  if not 0 < mfu <= 1:
    raise ConfigError(f"--mfu {mfu} must be in (0, 1]")
  vocab = padded_vocab(config, config.data.vocab_size)
  abstract = AbstractState.of(config, vocab)
  try:
    f = _footprint(config, t, abstract, vocab)
  except ConfigError as e:
    # A layout that does not split (the batch over data x fsdp x accumulation): propose one
    # that does, if one of the searched changes gives it.
    found = proposals(config, t, abstract, vocab) if "train.batch_size=" in str(e) else []
    if found:
      raise ConfigError(f"{e}; or keep the batch: {_proposal_text(found)}") from None
    raise
  if not _fits(f, t):
    params, opt, acts, total = f["params"], f["opt"], f["acts"], f["total"]
    raise ConfigError(
        f"does not fit: {total / GIB:,.1f} GiB per device (params {params / GIB:,.1f}, grads "
        f"{params / GIB:,.1f}, optimizer {opt / GIB:,.1f}, activations {acts / GIB:,.1f}) > "
        f"{USABLE_FRACTION:.0%} of the device's {t.hbm_bytes / GIB:,.0f} GiB; "
        + _proposal_text(proposals(config, t, abstract, vocab)))
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.state["params"]))
  data, fsdp, _ = f["shape"]
  m = config.model
  per_token = families.get(m.family).flops_per_token(n_params, vocab=vocab, hidden=m.hidden_size,
                                    layers=m.num_layers, seq_len=config.data.max_seq_length,
                                    max_position=m.max_position)
  rows = loader.segments_per_row(config)
  step_flops = per_token * config.train.batch_size * config.data.max_seq_length * rows
  step_time = step_flops / (t.num_devices * t.peak_flops * mfu) if t.peak_flops else None
  return Plan(topology_name or f"{num_devices} devices", t.num_devices, t.num_processes,
              dict(f["axis_sizes"]), config.train.batch_size,
              config.train.batch_size / (data * fsdp), f["micro"], n_params, f["params"],
              f["params"], f["opt"], f["acts"], f["total"], t.hbm_bytes, step_flops, mfu,
              step_time)


def plan(config, topology_name=None, num_devices=None, mfu=0.4, hbm_gib=0.0,
         peak_tflops=0.0) -> dict:
  p = make_plan(config, topology_name, num_devices, mfu, hbm_gib, peak_tflops)
  for line in p.lines():
    console(line)
  out = dataclasses.asdict(p)
  console(json.dumps(out))
  return out
