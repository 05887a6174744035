"""`plm-jax plan`: what a config needs on a topology, without the hardware.

The mesh is built from fake devices of the named topology (plm_jax/hardware/topology.py) with the same
code as a real run, the model and optimizer abstractly (no parameter is allocated), and the
figures come from the PartitionSpecs the run would use:

- parameters, gradients and optimizer state per device: each tensor's shard (its dimensions
  divided by the mesh axes its spec names, rounded up as XLA pads), times its dtype's size;
- activations per device: what autodiff keeps for the backward pass, traced from the model the
  run builds (plm_jax/sizing/residuals.py: every family's LayerNorm, GELU, dropout masks, XLNet's two
  streams and memory, remat, the kernel the target runs), plus the backward's working set of one
  layer, the XLA kernel's rematerialised scores and one loss chunk's logits; calibrated against
  XLA's TPU compiler (within 15% of `plan --compile`'s compiled size on the TPU presets).
- FLOPs per step: what the step computes (plm_jax/hardware/flops.py's one convention for every family,
  checked against XLA's count of the compiled step), and beside it the references' model-FLOPs
  convention; the step time at a stated MFU of the computed FLOPs.

A layout that cannot run is refused with the reason: heads or MLP not divisible by tensor, a
batch that does not split, more memory per device than the device has (90% usable); and with
the values that fit, if the search of `proposals` finds any (the same estimate, applied to
more micro-batches, remat, a wider fsdp axis).
"""

import copy
import dataclasses
import functools
import json
import math

import jax
import numpy as np

from plm_jax import checks, families, parallel
from plm_jax.sizing import aot, residuals
from plm_jax.hardware import topology
from plm_jax.data import loader, phases
from plm_jax.errors import ConfigError
from plm_jax.hardware.flops import computed_flops_per_step
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
  """Activation bytes per device for a micro-batch of `micro_batch` rows: what autodiff keeps
  for the backward pass, traced from the model (plm_jax/sizing/residuals.py), plus the backward's
  working set of one layer, the XLA kernel's scores and one loss chunk's logits."""
  rows = micro_batch * loader.segments_per_row(config)
  logits_rows = rows * (config.data.max_seq_length
                        if families.get(config.model.family).decoder else predictions)
  if config.objective.loss_chunk > 0:                          # one chunk's logits at a time
    logits_rows = min(logits_rows, config.objective.loss_chunk)
  parts = residuals.activation_bytes(config, micro_batch, vocab, platform, logits_rows,
                                     -(-vocab // tensor))
  return sum(parts.values())


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
  flops_per_step: float                  # as the step computes them (plm_jax/hardware/flops.py)
  mfu: float
  step_time_s: float | None
  reference_flops_per_step: float = 0.0  # the references' model-FLOPs convention
  # a two-phase run (plm_jax/data/phases.py): the fields above are phase 1's, these phase 2's
  # (its length, first step, activation and total bytes, FLOPs and time per step); both fit
  phase2: dict | None = None

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
           f"FLOPs per step {self.flops_per_step:.3e} as computed "
           f"({self.reference_flops_per_step:.3e} in the references' model-FLOPs convention)"
           + (f"; step time {self.step_time_s * 1e3:,.1f} ms at MFU {self.mfu:.0%}"
              if self.step_time_s is not None else "; step time: peak FLOP/s unknown")]
    if self.phase2:
      p = self.phase2
      out[-1] = "phase 1: " + out[-1]
      out.append(f"phase 2 (from step {p['from_step'] + 1:,}, {p['seq_len']} tokens): "
                 f"activations (estimate) {g(p['activation_bytes'])}, total "
                 f"{g(p['total_bytes'])} per device (micro-batch {p['micro_batch']}); FLOPs per step "
                 f"{p['flops_per_step']:.3e} as computed"
                 + (f"; step time {p['step_time_s'] * 1e3:,.1f} ms"
                    if p["step_time_s"] is not None else ""))
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
  acts = activation_bytes(config, micro, tensor, vocab,
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
    compiled = (f"; compiled: {f['compiled_gib']:,.1f} GiB" if "compiled_gib" in f else "")
    size = f" ({f['total'] / GIB:,.1f} GiB per device" + compiled + (
        f", micro-batch {f['micro']} per device)" if "optim.grad_accum_steps" in overrides
        else ")")
    out.append(_flags(overrides) + size)
  return "fits with " + ", or ".join(out)


def _compiled_proposals(config, found, check) -> list:
  """With `check` (plan --compile): each proposal compiled for the topology; kept only if the
  compiler fits it too, with its compiled size."""
  if check is None:
    return found
  kept = []
  for overrides, f in found:
    result = check(_with(config, overrides))
    if result is not None and result["fits"]:
      kept.append((overrides, {**f, "compiled_gib": result["compiled_gib"]}))
  return kept


def _two_phase_plan(config, *args) -> Plan:
  """Each phase is a step of its own shape and both must fit: the plan is phase 1's, with
  phase 2's figures beside it."""
  first = make_plan(phases.phase_config(config, 1), *args)
  try:
    second = make_plan(phases.phase_config(config, 2), *args)
  except ConfigError as e:
    # its proposals are for phase 2's step: its own micro-batches
    why = str(e).replace("--config.optim.grad_accum_steps=",
                         "--config.optim.phase2_grad_accum_steps=")
    raise ConfigError(f"phase 2 ({config.data.phase2_seq_length} tokens, "
                      f"data.phase2_seq_length): {why}") from None
  first.phase2 = {"seq_len": config.data.phase2_seq_length,
                  "from_step": phases.switch_step(config), "micro_batch": second.micro_batch,
                  "activation_bytes": second.activation_bytes,
                  "total_bytes": second.total_bytes,
                  "flops_per_step": second.flops_per_step,
                  "step_time_s": second.step_time_s}
  return first


def make_plan(config, topology_name: str | None = None, num_devices: int | None = None,
              mfu: float = 0.4, hbm_gib: float = 0.0, peak_tflops: float = 0.0,
              check=None) -> Plan:
  """The plan of `config` on a topology, or a ConfigError naming why it cannot run and the
  changes that fit; `check(config) -> compiled figures or None` (plan --compile) compiles each
  proposed change and keeps those the compiler fits too."""
  if phases.enabled(config):
    return _two_phase_plan(config, topology_name, num_devices, mfu, hbm_gib, peak_tflops, check)
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
    found = _compiled_proposals(config, found, check)
    if found:
      raise ConfigError(f"{e}; or keep the batch: {_proposal_text(found)}") from None
    raise
  if not _fits(f, t):
    params, opt, acts, total = f["params"], f["opt"], f["acts"], f["total"]
    raise ConfigError(
        f"does not fit: {total / GIB:,.1f} GiB per device (params {params / GIB:,.1f}, grads "
        f"{params / GIB:,.1f}, optimizer {opt / GIB:,.1f}, activations {acts / GIB:,.1f}) > "
        f"{USABLE_FRACTION:.0%} of the device's {t.hbm_bytes / GIB:,.0f} GiB; "
        + _proposal_text(_compiled_proposals(config, proposals(config, t, abstract, vocab),
                                             check)))
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.state["params"]))
  data, fsdp, _ = f["shape"]
  m = config.model
  per_token = families.get(m.family).flops_per_token(n_params, vocab=vocab, hidden=m.hidden_size,
                                    layers=m.num_layers, seq_len=config.data.max_seq_length,
                                    max_position=m.max_position)
  rows = loader.segments_per_row(config)
  reference = per_token * config.train.batch_size * config.data.max_seq_length * rows
  step_flops = computed_flops_per_step(loader.step_shape(config, vocab))
  step_time = step_flops / (t.num_devices * t.peak_flops * mfu) if t.peak_flops else None
  return Plan(topology_name or f"{num_devices} devices", t.num_devices, t.num_processes,
              dict(f["axis_sizes"]), config.train.batch_size,
              config.train.batch_size / (data * fsdp), f["micro"], n_params, f["params"],
              f["params"], f["opt"], f["acts"], f["total"], t.hbm_bytes, step_flops, mfu,
              step_time, reference)


def plan(config, topology_name=None, num_devices=None, mfu=0.4, hbm_gib=0.0,
         peak_tflops=0.0, compile_check: bool = False) -> dict:
  """`plm-jax plan`; with `compile_check` (--compile) the estimate beside the memory XLA's TPU
  compiler plans for the same step on the topology (and a refusal's proposals compiled)."""
  check = None
  if compile_check:
    if not topology_name:
      raise ConfigError("--compile compiles for a named topology: give --topology NAME")
    topology.get_compilable(topology_name)          # a GPU topology: one line, before work
    topology.compile_only_devices(topology.get(topology_name))   # libtpu present
    check = functools.partial(_compile_or_none, topology_name=topology_name)
  p = make_plan(config, topology_name, num_devices, mfu, hbm_gib, peak_tflops, check)
  for line in p.lines():
    console(line)
  out = dataclasses.asdict(p)
  if compile_check:
    console(f"compiling the step for {topology_name} to check the estimate...")
    compiled = aot.compile_step(config, topology_name)
    out.update(estimate_gib=round(p.total_bytes / GIB, 3),
               compiled_gib=compiled["compiled_gib"], compile_s=compiled["compile_s"],
               fits=compiled["fits"], error=round(p.total_bytes / GIB / compiled["compiled_gib"]
                                                  - 1, 4),
               compiled={k: compiled[k] for k in ("argument_gib", "temp_gib", "output_gib",
                                                  "alias_gib", "mosaic_kernels",
                                                  "attention_kernels")})
    console(f"estimate {out['estimate_gib']:,.2f} GiB per device, compiled "
            f"{out['compiled_gib']:,.2f} GiB ({out['error']:+.1%}) of "
            f"{compiled['hbm_gib']:,.0f} GiB: "
            + ("fits" if compiled["fits"] else "does NOT fit by the compiler's count")
            + f"; compiled in {compiled['compile_s']} s")
  console(json.dumps(out))
  if compile_check and not out["fits"]:
    raise ConfigError(f"the compiled step needs {out['compiled_gib']:,.1f} GiB per device, more "
                      f"than {topology_name}'s {p.device_bytes / GIB:,.0f} GiB (the estimate "
                      f"said {out['estimate_gib']:,.1f}): "
                      + _proposal_text(_compiled_proposals(
                          config, proposals(config, topology.get(topology_name),
                                            AbstractState.of(config, padded_vocab(
                                                config, config.data.vocab_size)),
                                            padded_vocab(config, config.data.vocab_size)),
                          check)))
  return out


def _compile_or_none(config, topology_name: str) -> dict | None:
  """The compiled figures of `config` on the topology, or None where it does not compile (the
  compiler ran out of memory, or the layout is refused)."""
  try:
    return aot.compile_step(config, topology_name)
  except ConfigError:
    return None
