"""`plm-jax bench`: time the real train step on synthetic batches.

Reports step time, tokens/s and sequences/s, MFU (model FLOPs as in `plm_jax.flops` over the
device's datasheet peak), compile time and peak device memory. Nothing is written to disk.
"""

import json
import time

import jax
import numpy as np
from flax import nnx

from plm_jax import checks, families, parallel
from plm_jax.data import loader
from plm_jax.errors import ConfigError
from plm_jax.flops import peak_flops
from plm_jax.generate import SamplingConfig, generate
from plm_jax.metrics_writer import console
from plm_jax.models.config import model_config, padded_vocab
from plm_jax.trainer import Trainer


def peak_memory_bytes() -> int | None:
  stats = [d.memory_stats() for d in jax.local_devices()]
  peaks = [s.get("peak_bytes_in_use") for s in stats if s]
  return max(peaks) if peaks and all(p is not None for p in peaks) else None


def bench(config) -> dict:
  checks.validate(config, jax.device_count())
  mesh = parallel.mesh_for(config)
  vocab = padded_vocab(config, config.data.vocab_size)
  trainer = Trainer.create(config, mesh, vocab)
  state = trainer.init_state(config.train.seed)
  t0 = time.perf_counter()
  train_step = trainer.compile_train_step()
  compile_s = time.perf_counter() - t0

  synthetic = loader.synthetic_batch(config, config.data.vocab_size)
  batch = loader.to_global(loader.local_rows(synthetic), trainer.batch_shardings)
  for _ in range(config.bench.warmup_steps):
    state, metrics = train_step(state, batch)
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for _ in range(config.bench.steps):
    state, metrics = train_step(state, batch)
  loss = float(metrics["loss"])          # waits for the last step
  step_s = (time.perf_counter() - t0) / max(config.bench.steps, 1)

  b, t = config.train.batch_size, config.data.max_seq_length
  n_params = trainer.num_params
  per_token = families.get(config.model.family).flops_per_token(
      n_params, vocab=vocab, hidden=config.model.hidden_size,
      layers=config.model.num_layers, seq_len=t, max_position=config.model.max_position)
  tokens_per_s = b * t / step_s
  kind = jax.devices()[0].device_kind
  peak = peak_flops(kind)
  mem = peak_memory_bytes()
  result = {
      "figure": "plm_jax_bench", "family": config.model.family, "size": config.model.size,
      "device": kind, "devices": jax.device_count(), "mesh": dict(mesh.shape),
      "dtype": config.model.dtype, "attention": config.model.attention_impl,
      "params_m": round(n_params / 1e6, 1), "B": b, "T": t, "step_ms": round(step_s * 1e3, 2),
      "tokens_per_s": round(tokens_per_s), "seq_per_s": round(b / step_s, 1),
      "mfu": (None if peak is None
              else round(tokens_per_s * per_token / (peak * jax.device_count()), 4)),
      "compile_s": round(compile_s, 1),
      "peak_mem_gib": None if mem is None else round(mem / 2**30, 2), "loss": loss,
  }
  mfu_text = "n/a (unknown peak)" if peak is None else f"{result['mfu']:.1%}"
  mem_text = "n/a" if mem is None else f"{result['peak_mem_gib']} GiB"
  console(f"bench {config.model.family} {config.model.size} on {jax.device_count()} x {kind}, "
          f"B={b} T={t} {config.model.dtype}: {result['step_ms']} ms/step, "
          f"{result['tokens_per_s']:,} tokens/s, {result['seq_per_s']:,} seq/s, MFU {mfu_text}, "
          f"compile {result['compile_s']}s, peak memory {mem_text}")
  console(json.dumps(result))
  return result


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
