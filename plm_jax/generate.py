"""Greedy decoding for GPT models (recomputing the prefix; compiled once per shape).

A reference decoder: one jitted step that reads the logits at the last filled position of a
fixed-size buffer, so a whole continuation compiles once. The key/value-cached decoder with
sampling is the downstream issue's; this one is what it will be checked against.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def greedy(model: nnx.Module, prompt_ids: np.ndarray, max_new_tokens: int,
           eos_id: int | None = None) -> np.ndarray:
  """[B, T0] prompt (no padding) -> [B, T0 + max_new_tokens] ids, argmax at every step.

  After `eos_id` a row keeps producing `eos_id` (as transformers pads finished rows).
  """
  prompt = np.asarray(prompt_ids, np.int32)
  b, t0 = prompt.shape
  total = t0 + max_new_tokens
  if total > model.cfg.max_position:
    raise ValueError(f"prompt + new tokens = {total} exceeds max_position "
                     f"{model.cfg.max_position}")
  graphdef, params = nnx.split(model, nnx.Param)

  @jax.jit
  def step(params, buffer, length, done):
    logits = nnx.merge(graphdef, params)(buffer)["logits"]
    nxt = jnp.argmax(logits[:, length - 1], axis=-1).astype(jnp.int32)
    if eos_id is not None:
      nxt = jnp.where(done, eos_id, nxt)
      done = done | (nxt == eos_id)
    return buffer.at[:, length].set(nxt), done

  buffer = jnp.zeros((b, total), jnp.int32).at[:, :t0].set(prompt)
  done = jnp.zeros((b,), bool)
  for length in range(t0, total):
    buffer, done = step(params, buffer, length, done)
  return np.asarray(buffer)
