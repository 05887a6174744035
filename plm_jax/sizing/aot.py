"""The real train step compiled ahead of time for a TPU topology, on any host.

`compile_step(config, "v5p-128")` builds the step `plm-jax train` would run (same config
resolution, same Trainer) over a mesh of libtpu's compile-only devices of the topology
(plm_jax/hardware/topology.py), with every "auto" setting resolved for the TPU (accelerator.targeting),
and compiles it with XLA's TPU compiler: the program, its memory per chip and its collectives
are the ones the pod would run, found before the pod is rented. It is what
`plm-jax bench --compile-only --topology NAME` prints and what `plm-jax plan --compile` checks
its estimate against.

Memory per chip, as XLA planned it: arguments (parameters, optimizer state, batch), temporaries
(activations, gradients, collectives' buffers) and outputs; the donated state's outputs alias
its arguments, so `compiled_gib` counts arguments + temporaries + the outputs not aliased.
"""

import time

import jax

from plm_jax import checks, parallel
from plm_jax.hardware import accelerator, topology
from plm_jax.errors import ConfigError
from plm_jax.hardware.hlo_stats import collectives, mosaic_kernels
from plm_jax.models.config import padded_vocab
from plm_jax.trainer import Trainer

GIB = 2 ** 30


def compiled_bytes(memory) -> dict:
  """Per-device bytes of a compiled program's memory analysis (None where not reported)."""
  if memory is None:
    return {}
  args, temp = memory.argument_size_in_bytes, memory.temp_size_in_bytes
  out, alias = memory.output_size_in_bytes, memory.alias_size_in_bytes
  return {"argument": args, "temp": temp, "output": out, "alias": alias,
          "total": args + temp + out - alias}


def compile_step(config, topology_name: str) -> dict:
  """Compiles `config`'s train step for TPU topology `topology_name`; returns the figures
  (memory in GiB per chip, compile seconds, kernels, collectives) and the compiled program."""
  t = topology.get_compilable(topology_name)
  devices = topology.compile_only_devices(t)
  with accelerator.targeting(t.platform):
    checks.validate(config, t.num_devices, num_processes=t.num_processes)
    mesh = parallel.mesh_for(config, devices)
    vocab = padded_vocab(config, config.data.vocab_size)
    trainer = Trainer.create(config, mesh, vocab)
    settings = accelerator.resolved(config)
    t0 = time.perf_counter()
    try:
      compiled = trainer.compile_train_step()
    except jax.errors.JaxRuntimeError as e:
      raise _out_of_memory(e, topology_name, t) from None
    compile_s = time.perf_counter() - t0
  hlo = compiled.as_text()
  memory = compiled_bytes(compiled.memory_analysis())
  gib = lambda x: round(x / GIB, 3)  # noqa: E731
  return {
      "figure": "plm_jax_compile", "family": config.model.family, "size": config.model.size,
      "topology": topology_name, "device": t.device_kind, "devices": t.num_devices,
      "processes": t.num_processes, "mesh": dict(mesh.shape), **settings,
      "attention_kernels": trainer.attention_kernels,
      "B": config.train.batch_size, "T": config.data.max_seq_length,
      "grad_accum_steps": config.optim.grad_accum_steps, "params_m": round(trainer.num_params / 1e6, 1),
      "mosaic_kernels": mosaic_kernels(hlo), "compile_s": round(compile_s, 1),
      "temp_gib": gib(memory["temp"]), "argument_gib": gib(memory["argument"]),
      "output_gib": gib(memory["output"]), "alias_gib": gib(memory["alias"]),
      "compiled_gib": gib(memory["total"]), "hbm_gib": gib(t.hbm_bytes),
      "fits": memory["total"] <= t.hbm_bytes, "collectives": collectives(hlo),
  }


def _out_of_memory(error, name: str, t) -> Exception:
  """XLA's TPU compiler refuses a program that does not fit HBM: one line that says so."""
  text = str(error)
  if "RESOURCE_EXHAUSTED" not in text and "Ran out of memory" not in text:
    return error
  first = next((line.strip() for line in text.splitlines() if "memory" in line.lower()),
               text.splitlines()[0])
  return ConfigError(f"does not fit {name} ({t.hbm_bytes / GIB:.0f} GiB per chip): XLA's TPU "
                     f"compiler: {first[:300]}; try `plm-jax plan --topology {name}` for layouts "
                     "that fit (gradient accumulation, remat, a wider fsdp axis)")
