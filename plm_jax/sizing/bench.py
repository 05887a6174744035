"""`plm-jax bench`: compile and time the train step of `plm-jax train` on synthetic batches.

The step is the one training runs (same Trainer, same settings: what "auto" resolves to on this
machine is printed first). Reported: compile time (the CLI leaves the persistent compilation
cache off for bench, so it is a real compile), the compiled step's memory (temporaries,
arguments, outputs), step time, tokens/s and sequences/s, FLOPs per token as the step computes
them (plm_jax/hardware/flops.py's one convention for every family: `mfu_computed`) and in the PyTorch
references' model-FLOPs convention (`mfu`, to compare with published MFU), MFU both ways over the device's datasheet
peak, and peak device memory. `--compile-only` stops after the compile (any size, on a CPU too).
Nothing is written to disk.
"""

import glob
import gzip
import json
import os
import time

import jax
import numpy as np
from flax import nnx

from plm_jax import checks, families, parallel
from plm_jax.hardware import accelerator, topology
from plm_jax.sizing import aot
from plm_jax.data import loader, phases
from plm_jax.errors import ConfigError
from plm_jax.hardware.flops import computed_flops_per_step, peak_flops
from plm_jax.models.generate import SamplingConfig, generate
from plm_jax.run.metrics_writer import console
from plm_jax.families import model_config
from plm_jax.models.config import padded_vocab
from plm_jax.trainer import Trainer

GIB = 2 ** 30


def peak_memory_bytes() -> int | None:
  stats = [d.memory_stats() for d in jax.local_devices()]
  peaks = [s.get("peak_bytes_in_use") for s in stats if s]
  return max(peaks) if peaks and all(p is not None for p in peaks) else None


def compiled_memory(compiled) -> dict:
  """Per-device bytes of the compiled step, as XLA planned them (GiB)."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 - not every backend implements it
    m = None
  if m is None:
    return {}
  return {"temp_gib": round(m.temp_size_in_bytes / GIB, 2),
          "argument_gib": round(m.argument_size_in_bytes / GIB, 2),
          "output_gib": round(m.output_size_in_bytes / GIB, 2),
          "alias_gib": round(m.alias_size_in_bytes / GIB, 2)}


def slowest_ops(trace_dir: str, steps: int, top: int = 12) -> list[dict]:
  """The ops that took longest in the newest trace under `trace_dir`, summed by name: on a GPU
  or TPU the device's streams, on a CPU its XLA compute threads."""
  traces = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True),
                  key=os.path.getmtime)
  if not traces:
    return []
  with gzip.open(traces[-1], "rt", encoding="utf-8") as f:
    data = json.load(f)
  events = data.get("traceEvents", []) if isinstance(data, dict) else data
  names = {(e.get("pid"), e.get("tid")): e.get("args", {}).get("name", "") for e in events
           if e.get("ph") == "M" and e.get("name") in ("process_name", "thread_name")}
  processes = {e.get("pid"): e.get("args", {}).get("name", "") for e in events
               if e.get("ph") == "M" and e.get("name") == "process_name"}
  device = {pid for pid, name in processes.items() if name.startswith("/device:")}

  def counted(e) -> bool:
    if device:
      return e.get("pid") in device
    return names.get((e.get("pid"), e.get("tid")), "").startswith("tf_XLA")

  total: dict[str, float] = {}
  for e in events:
    if e.get("ph") == "X" and counted(e):
      total[e.get("name", "?")] = total.get(e.get("name", "?"), 0.0) + float(e.get("dur", 0))
  whole = sum(total.values()) or 1.0
  ranked = sorted(total.items(), key=lambda kv: -kv[1])[:top]
  return [{"name": name, "ms_per_step": round(us / 1e3 / steps, 3), "share": round(us / whole, 4)}
          for name, us in ranked]


def model_flops(config, n_params: int, vocab: int) -> tuple[float, float]:
  """(per token in the references' convention, per token as plm-jax's step computes it: one
  convention for every family, plm_jax/hardware/flops.py)."""
  m, t = config.model, config.data.max_seq_length
  family = families.get(m.family)
  reference = family.flops_per_token(n_params, vocab=vocab, hidden=m.hidden_size,
                                     layers=m.num_layers, seq_len=t, max_position=m.max_position)
  shape = loader.step_shape(config, vocab)
  return reference, computed_flops_per_step(shape) / (shape.rows * shape.segments * t)


def bench_topology(config, topology_name: str) -> dict:
  """`bench --compile-only --topology NAME`: the train step compiled for a TPU topology on this
  host (plm_jax/sizing/aot.py): its settings, kernels, memory per chip, collectives, compile time."""
  topology.get_compilable(topology_name)
  console(f"compiling the {config.model.family} {config.model.size} train step for "
          f"{topology_name} (XLA's TPU compiler, ahead of time on this host)...")
  result = aot.compile_step(config, topology_name)
  c = result["collectives"]
  console(f"compiled in {result['compile_s']} s for {result['devices']} x {result['device']}, "
          f"mesh {result['mesh']}: {result['dtype']} compute, attention "
          f"{result['attention_kernels']} ({result['mosaic_kernels']} Mosaic kernels)")
  console(f"per chip: arguments {result['argument_gib']} GiB, temporaries {result['temp_gib']} "
          f"GiB, outputs {result['output_gib']} GiB ({result['alias_gib']} GiB aliased): "
          f"{result['compiled_gib']} GiB of {result['hbm_gib']:.0f} GiB HBM, "
          f"{'fits' if result['fits'] else 'does NOT fit'}")
  console("collectives per step and chip: " + ", ".join(
      f"{k} {v['count']} x ({v['bytes'] / GIB:.2f} GiB)" for k, v in c.items() if v["count"]))
  console(json.dumps(result))
  return result


def _first_phase(config):
  """Phase 1's config: one step shape is timed (phase 2's is that of the one-phase config
  printed)."""
  if not phases.enabled(config):
    return config
  second = phases.phase_config(config, 2)
  console(f"bench times phase 1's step; phase 2's ({second.data.max_seq_length} tokens): "
          f"--config.data.phase2_seq_length=0 --config.data.max_seq_length="
          f"{second.data.max_seq_length} --config.objective.max_predictions="
          f"{loader.predictions_per_sequence(second)} --config.optim.grad_accum_steps="
          f"{second.optim.grad_accum_steps}")
  return phases.phase_config(config, 1)


def _batch_and_state(config, trainer):
  synthetic = loader.synthetic_batch(config, config.data.vocab_size)
  return (loader.to_global(loader.local_rows(synthetic), trainer.batch_shardings),
          trainer.init_state(config.train.seed))


def _timed_steps(config, trainer, train_step) -> tuple[float, float]:
  """(seconds per step, the last loss) over bench.steps steps after bench.warmup_steps."""
  batch, state = _batch_and_state(config, trainer)
  for _ in range(config.bench.warmup_steps):
    state, metrics = train_step(state, batch)
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for _ in range(config.bench.steps):
    state, metrics = train_step(state, batch)
  loss = float(metrics["loss"])          # waits for the last step
  return (time.perf_counter() - t0) / max(config.bench.steps, 1), loss


def _profiled(config, trainer, train_step, profile: str) -> list[dict]:
  """A trace of 3 steps in `profile`, and the slowest ops per step (printed)."""
  batch, state = _batch_and_state(config, trainer)
  with jax.profiler.trace(profile):
    for _ in range(3):
      state, metrics = train_step(state, batch)
    jax.block_until_ready(metrics)
  console(f"profile of 3 steps in {profile} (TensorBoard's profile plugin or Perfetto); "
          "the slowest ops, per step:")
  ops = slowest_ops(profile, steps=3)
  for op in ops:
    console(f"  {op['ms_per_step']:9.3f} ms  {op['share']:6.1%}  {op['name']}")
  return ops


def bench(config, compile_only: bool = False, profile: str = "", topology_name: str = ""
          ) -> dict:
  if topology_name:
    if not compile_only or profile:
      raise ConfigError(f"--topology {topology_name} compiles for hardware that is not here: "
                        "add --compile-only (and drop --profile), or drop --topology to time "
                        "the step on this machine's devices")
    return bench_topology(config, topology_name)
  checks.validate(config, jax.device_count())
  config = _first_phase(config)
  mesh = parallel.mesh_for(config)
  vocab = padded_vocab(config, config.data.vocab_size)
  trainer = Trainer.create(config, mesh, vocab)
  b, t = config.train.batch_size, config.data.max_seq_length
  kind = jax.devices()[0].device_kind
  console(f"bench {config.model.family} {config.model.size} on {jax.device_count()} x {kind}, "
          f"B={b} T={t}: {accelerator.describe(config)}, output layer in chunks of "
          f"{config.objective.loss_chunk or 'all'} tokens")
  # A real compile: the CLI leaves the persistent compilation cache off for bench.
  t0 = time.perf_counter()
  train_step = trainer.compile_train_step()
  compile_s = time.perf_counter() - t0
  console(f"attention: {trainer.attention_kernels}")
  n_params = trainer.num_params
  reference, computed = model_flops(config, n_params, vocab)
  result = {"figure": "plm_jax_bench", "family": config.model.family, "size": config.model.size,
            "device": kind, "devices": jax.device_count(), "mesh": dict(mesh.shape),
            **accelerator.resolved(config), "attention_kernels": trainer.attention_kernels,
            "loss_chunk": config.objective.loss_chunk,
            "params_m": round(n_params / 1e6, 1), "B": b, "T": t,
            "compile_s": round(compile_s, 1), **compiled_memory(train_step),
            "flops_per_token": round(reference), "flops_per_token_computed": round(computed),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            # launch/bench_vs_reference.sh names the A/B runs (the flag under test)
            "tag": os.environ.get("PLM_JAX_BENCH_TAG", "")}
  memory = (f"temporaries {result.get('temp_gib', 'n/a')} GiB, arguments "
            f"{result.get('argument_gib', 'n/a')} GiB")
  if compile_only:
    console(f"compiled in {result['compile_s']} s; per device: {memory}")
    console(json.dumps(result))
    return result

  step_s, loss = _timed_steps(config, trainer, train_step)
  if profile:                             # after the timing, which tracing would slow
    result["slowest_ops"] = _profiled(config, trainer, train_step, profile)
  result.update(_timing_figures(config, step_s, reference, computed, kind), loss=loss)
  _say_timing(result, memory)
  console(json.dumps(result))
  return result


def _timing_figures(config, step_s: float, reference: float, computed: float, kind: str
                    ) -> dict:
  """Step time, throughput, MFU in both conventions and peak memory of a timed step."""
  b, t = config.train.batch_size, config.data.max_seq_length
  tokens_per_s = b * t * loader.segments_per_row(config) / step_s
  peak = peak_flops(kind)
  mfu = lambda per_token: (None if peak is None  # noqa: E731
                           else round(tokens_per_s * per_token / (peak * jax.device_count()), 4))
  mem = peak_memory_bytes()
  return {"step_ms": round(step_s * 1e3, 2), "tokens_per_s": round(tokens_per_s),
          "seq_per_s": round(b / step_s, 1), "mfu": mfu(reference), "mfu_computed": mfu(computed),
          "peak_mem_gib": None if mem is None else round(mem / GIB, 2)}


def _say_timing(result: dict, memory: str) -> None:
  mfu_text = ("n/a (unknown peak)" if result["mfu"] is None else
              f"{result['mfu_computed']:.1%} as computed ({result['mfu']:.1%} in the references' "
              "convention)")
  mem = result["peak_mem_gib"]
  console(f"{result['step_ms']} ms/step, {result['tokens_per_s']:,} tokens/s, "
          f"{result['seq_per_s']:,} seq/s, MFU {mfu_text}, compile {result['compile_s']} s, "
          f"{memory}, peak memory {'n/a' if mem is None else str(mem) + ' GiB'}")


def bench_decode(config, batch_sizes: list[int], prompt_lengths: list[int],
                 new_tokens: int) -> list[dict]:
  """Decode tokens/s of a (randomly initialised) GPT of `config`, with and without the key/value
  cache, for each batch size and prompt length; compilation is excluded (one warm-up run)."""
  checks.validate_data(config)
  family = families.get(config.model.family)
  if not family.decoder:
    raise ConfigError("bench-decode needs a decoder (GPT) config, e.g. configs/gpt.py:tiny")
  vocab = padded_vocab(config, config.data.vocab_size)
  model = family.build(model_config(config, vocab), nnx.Rngs(config.train.seed))
  rng = np.random.default_rng(0)
  cfg = SamplingConfig(max_new_tokens=new_tokens)
  rows = []
  for b in batch_sizes:
    for length in prompt_lengths:
      prompts = [list(rng.integers(1, vocab, length)) for _ in range(b)]
      for use_cache in (True, False):
        generate(model, prompts, cfg, use_cache=use_cache)            # compile
        t0 = time.perf_counter()
        generate(model, prompts, cfg, use_cache=use_cache)
        seconds = time.perf_counter() - t0
        steps: list = []
        generate(model, prompts, cfg, use_cache=use_cache, step_times=steps)
        quarter = max(1, len(steps) // 4)
        rows.append({"figure": "decode", "batch": b, "prompt_length": length,
                     "cache": use_cache, "new_tokens": new_tokens,
                     "ms_per_token": round(seconds / new_tokens * 1e3, 3),
                     "tokens_per_s": round(b * new_tokens / seconds, 1),
                     # per-step cost early vs late in the same generation (flat with the cache)
                     "first_quarter_ms": round(float(np.median(steps[1:quarter + 1])) * 1e3, 3),
                     "last_quarter_ms": round(float(np.median(steps[-quarter:])) * 1e3, 3)})
        r = rows[-1]
        console(f"decode B={b} prompt={length} {'with' if use_cache else 'without'} cache: "
                f"{r['ms_per_token']} ms per step ({r['first_quarter_ms']} ms early, "
                f"{r['last_quarter_ms']} ms late), {r['tokens_per_s']:,} tokens/s")
  for r in rows:
    console(json.dumps(r))
  return rows
