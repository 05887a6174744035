"""Text generation for GPT models: incremental decoding with a key/value cache.

The prompt is processed once (prefill), then one token per step, each step reading the cached
keys/values instead of recomputing the prefix, so the cost per new token stays flat as the
sequence grows. Prompts of different lengths are left-padded into a bucket (a multiple of
`bucket`), so each (batch, bucket, max_new_tokens) shape compiles once. Greedy decoding
(temperature 0) or sampling with temperature, top-k and top-p, reproducible from a seed, either
with transformers' repetition penalty and no-repeat n-gram size (`penalize`); or
beam search (`beam_search`), whose hypotheses share the same cache layout with the batch rows
reordered after every step.

`greedy` (recomputing the whole prefix every step) is the plain reference the cached decoder is
tested against.
"""

import dataclasses
import functools
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int = 32
  temperature: float = 0.0      # 0 = greedy
  top_k: int = 0                # 0 = no top-k filter
  top_p: float = 1.0            # 1 = no nucleus filter
  seed: int = 0
  eos_id: int | None = None     # stop a row at this token (it is kept in the output)
  # transformers' generate settings of the same names (see `penalize`)
  repetition_penalty: float = 1.0   # > 1: tokens already in the sequence are less likely
  no_repeat_ngram_size: int = 0     # > 0: no n-gram of this size occurs twice


def penalize(logits: jax.Array, buffer: jax.Array, seen: jax.Array, index,
             repetition_penalty: float, no_repeat_ngram_size: int) -> jax.Array:
  """transformers' RepetitionPenaltyLogitsProcessor, then its NoRepeatNGramLogitsProcessor, on
  the logits [B, V] of the token for slot `index` of `buffer` [B, S], whose sequence so far is
  the slots where `seen` (prompt and generated tokens; left padding is no part of it).

  The penalty (CTRL's) divides the positive logits of every token in the sequence by it and
  multiplies the negative ones; an n-gram size bans each token that would complete an n-gram
  the sequence holds already (its last n - 1 tokens seen before, followed by it)."""
  if repetition_penalty == 1.0 and no_repeat_ngram_size <= 0:
    return logits
  logits = logits.astype(jnp.float32)
  b, total = buffer.shape
  rows = jnp.arange(b)[:, None]
  if repetition_penalty != 1.0:
    present = jnp.zeros(logits.shape, bool).at[rows, buffer].max(seen)
    logits = jnp.where(present, jnp.where(logits < 0, logits * repetition_penalty,
                                          logits / repetition_penalty), logits)
  n = no_repeat_ngram_size
  if 0 < n <= total:
    w = total - n + 1
    # an earlier n-gram starting at slot j: its slots j .. j + n - 1 all in the sequence (the
    # sequence is contiguous: its first and last slot suffice)
    match = seen[:, :w] & seen[:, n - 1:]
    start = index - (n - 1)                              # the last n - 1 tokens: slots start..
    if n > 1:
      match &= (start >= 0) & jax.lax.dynamic_index_in_dim(seen, jnp.maximum(start, 0), axis=1)
    for k in range(n - 1):
      last = jax.lax.dynamic_index_in_dim(buffer, jnp.maximum(start, 0) + k, axis=1)
      match &= buffer[:, k:k + w] == last
    banned = jnp.zeros(logits.shape, bool).at[rows, buffer[:, n - 1:]].max(match)
    logits = jnp.where(banned, -jnp.inf, logits)
  return logits


def filter_logits(logits: jax.Array, top_k: int, top_p: float) -> jax.Array:
  """Sets logits outside the top-k / top-p (nucleus) set to -inf; always keeps the best token."""
  neg = jnp.finfo(logits.dtype).min
  if top_k > 0:
    kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
    logits = jnp.where(logits < kth, neg, logits)
  if top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs          # mass of the better tokens
    keep_sorted = before < top_p
    keep = jnp.zeros_like(keep_sorted).at[
        jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    logits = jnp.where(keep, logits, neg)
  return logits


def _choose(logits, key, cfg: SamplingConfig):
  if cfg.temperature <= 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = filter_logits(logits / cfg.temperature, cfg.top_k, cfg.top_p)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.lru_cache(maxsize=32)
def _compiled(graphdef, cfg: SamplingConfig, batch: int, bucket: int):
  """The jitted prefill and step functions of one shape bucket."""
  total = bucket + cfg.max_new_tokens

  def prefill(params, buffer, positions, valid):
    model = nnx.merge(graphdef, params)
    cache = model.init_cache(batch, total)
    logits, cache = model.decode(buffer[:, :bucket], positions[:, :bucket], cache, 0, valid)
    return logits[:, -1], cache

  def step(params, cache, buffer, positions, valid, index):
    """Logits for slot `index`: feeds only the token in slot index - 1 (the cache path)."""
    model = nnx.merge(graphdef, params)
    token = jax.lax.dynamic_slice_in_dim(buffer, index - 1, 1, axis=1)
    pos = jax.lax.dynamic_slice_in_dim(positions, index - 1, 1, axis=1)
    logits, cache = model.decode(token, pos, cache, index - 1, valid)
    return logits[:, 0], cache

  def full(params, buffer, positions, valid, index):
    """Logits for slot `index` by recomputing everything before it (the no-cache path)."""
    model = nnx.merge(graphdef, params)
    cache = model.init_cache(batch, total)
    limit = valid & (jnp.arange(total)[None, :] < index)
    logits, _ = model.decode(buffer, positions, cache, 0, limit)
    return jax.lax.dynamic_index_in_dim(logits, index - 1, axis=1, keepdims=False)

  def pick(logits, buffer, positions, valid, index, done, key):
    seen = valid & (jnp.arange(total)[None, :] < index)
    logits = penalize(logits, buffer, seen, index, cfg.repetition_penalty,
                      cfg.no_repeat_ngram_size)
    nxt = _choose(logits, jax.random.fold_in(key, index), cfg)
    if cfg.eos_id is not None:
      nxt = jnp.where(done, cfg.eos_id, nxt)
      done = done | (nxt == cfg.eos_id)
    buffer = jax.lax.dynamic_update_slice_in_dim(buffer, nxt[:, None], index, axis=1)
    last = jax.lax.dynamic_slice_in_dim(positions, index - 1, 1, axis=1)
    positions = jax.lax.dynamic_update_slice_in_dim(positions, last + 1, index, axis=1)
    valid = jax.lax.dynamic_update_slice_in_dim(valid, jnp.ones((batch, 1), bool), index, axis=1)
    return buffer, positions, valid, done

  return (jax.jit(prefill), jax.jit(step, donate_argnums=1), jax.jit(full), jax.jit(pick))


def generate(model: nnx.Module, prompts: list[list[int]], cfg: SamplingConfig, *,
             bucket: int = 16, use_cache: bool = True,
             step_times: list | None = None) -> list[list[int]]:
  """Continues each prompt (lists of ids, any lengths) by up to cfg.max_new_tokens tokens.

  Returns the new tokens of each prompt, cut after cfg.eos_id when it appears. `step_times`, if
  given, receives the wall time of every step (each then waits for the device: benchmarks only).
  """
  batch = len(prompts)
  longest = max(len(p) for p in prompts)
  if longest == 0:
    raise ValueError("every prompt needs at least one token")
  width = -(-longest // bucket) * bucket
  total = width + cfg.max_new_tokens
  if longest + cfg.max_new_tokens > model.cfg.max_position:
    raise ValueError(f"prompt ({longest}) + max_new_tokens ({cfg.max_new_tokens}) exceeds the "
                     f"model's {model.cfg.max_position} positions")
  buffer = np.zeros((batch, total), np.int32)
  positions = np.zeros((batch, total), np.int32)
  valid = np.zeros((batch, total), bool)
  for r, p in enumerate(prompts):                      # left-pad into the bucket
    buffer[r, width - len(p):width] = p
    positions[r, width - len(p):width] = np.arange(len(p))
    valid[r, width - len(p):width] = True
  graphdef, params = nnx.split(model, nnx.Param)
  prefill, step, full, pick = _compiled(graphdef, cfg, batch, width)
  key = jax.random.key(cfg.seed)
  buffer, positions, valid = jnp.asarray(buffer), jnp.asarray(positions), jnp.asarray(valid)
  done = jnp.zeros((batch,), bool)
  if use_cache:
    logits, cache = prefill(params, buffer, positions, valid)
  for index in range(width, total):
    t0 = time.perf_counter()
    if index > width:
      if use_cache:
        logits, cache = step(params, cache, buffer, positions, valid, index)
      else:
        logits = full(params, buffer, positions, valid, index)
    elif not use_cache:
      logits = full(params, buffer, positions, valid, index)
    buffer, positions, valid, done = pick(logits, buffer, positions, valid, index, done, key)
    if step_times is not None:
      buffer.block_until_ready()
      step_times.append(time.perf_counter() - t0)
    if cfg.eos_id is not None and index % 8 == 0 and bool(jnp.all(done)):
      break
  out = np.asarray(buffer[:, width:])
  result = []
  for row in out:
    row = [int(t) for t in row]
    if cfg.eos_id is not None and cfg.eos_id in row:
      row = row[:row.index(cfg.eos_id) + 1]
    result.append(row[:cfg.max_new_tokens])
  return result


def greedy(model: nnx.Module, prompt_ids: np.ndarray, max_new_tokens: int,
           eos_id: int | None = None) -> np.ndarray:
  """Reference: [B, T0] prompt -> [B, T0 + max_new_tokens] ids, recomputing the full prefix for
  every token with the plain forward pass. After `eos_id` a row keeps producing `eos_id`."""
  prompt = np.asarray(prompt_ids, np.int32)
  b, t0 = prompt.shape
  total = t0 + max_new_tokens
  if total > model.cfg.max_position:
    raise ValueError(f"prompt + new tokens = {total} exceeds max_position "
                     f"{model.cfg.max_position}")
  graphdef, params = nnx.split(model, nnx.Param)

  @jax.jit
  def one(params, buffer, length, done):
    logits = nnx.merge(graphdef, params)(buffer)["logits"]
    nxt = jnp.argmax(logits[:, length - 1], axis=-1).astype(jnp.int32)
    if eos_id is not None:
      nxt = jnp.where(done, eos_id, nxt)
      done = done | (nxt == eos_id)
    return buffer.at[:, length].set(nxt), done

  buffer = jnp.zeros((b, total), jnp.int32).at[:, :t0].set(prompt)
  done = jnp.zeros((b,), bool)
  for length in range(t0, total):
    buffer, done = one(params, buffer, length, done)
  return np.asarray(buffer)


# --- beam search -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BeamConfig:
  beam_size: int = 4
  max_new_tokens: int = 32
  # Wu et al. (2016)'s length penalty: a finished hypothesis of n tokens (its end-of-text
  # included) scores log p / ((5 + n) / 6) ** alpha; 0 = the plain log-probability, which
  # favours short outputs. 0.6 is GNMT's and T5's value.
  length_penalty: float = 0.6
  eos_id: int | None = None
  # as SamplingConfig's, on the log-probabilities (as transformers' beam search applies them)
  repetition_penalty: float = 1.0
  no_repeat_ngram_size: int = 0


def length_penalty(length: int, alpha: float) -> float:
  return ((5.0 + length) / 6.0) ** alpha


# scorer(parents, tokens) -> (log-probs [B, K, C], token ids [B, K, C]): the best C next tokens
# of every live hypothesis after it is extended by `tokens` [B * K] (parents [B * K]: the flat
# row each new hypothesis continues); parents is None for the first call (the prompts alone).
Scorer = Callable[[np.ndarray | None, np.ndarray | None], tuple[np.ndarray, np.ndarray]]


def beam_loop(scorer: Scorer, batch: int, cfg: BeamConfig) -> list[list[int]]:
  """The host side of beam search, over any scorer (a model with its cache, or a table in the
  tests). Keeps K live hypotheses per prompt; a hypothesis that ends with eos among the K best
  candidates is finished and scored with the length penalty; a prompt is done once it has K
  finished ones and its best live one, scored at the current length, cannot beat the worst of
  them (Hugging Face's rule for early_stopping=False). At max_new_tokens the live hypotheses
  compete too. Returns the best hypothesis of each prompt (its eos kept, as `generate`)."""
  k, alpha = cfg.beam_size, cfg.length_penalty
  scores = np.full((batch, k), -np.inf)
  scores[:, 0] = 0.0              # the K rows of a prompt start identical: extend only one
  live = [[[] for _ in range(k)] for _ in range(batch)]
  finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
  done = np.zeros(batch, bool)
  logp, ids = scorer(None, None)
  for t in range(cfg.max_new_tokens):
    c = logp.shape[-1]
    total = (scores[:, :, None] + logp).reshape(batch, -1)
    parents = np.tile(np.arange(k), (batch, 1))
    tokens = np.zeros((batch, k), np.int64)
    new_scores = np.full((batch, k), -np.inf)
    new_live = [[[] for _ in range(k)] for _ in range(batch)]
    for b in range(batch):
      if done[b]:
        continue
      chosen = 0
      for rank, j in enumerate(np.argsort(-total[b], kind="stable")[:2 * k]):
        if not np.isfinite(total[b, j]):
          break
        beam, token = divmod(int(j), c)
        token = int(ids[b, beam, token])
        seq = live[b][beam] + [token]
        if cfg.eos_id is not None and token == cfg.eos_id:
          if rank < k:
            finished[b].append((float(total[b, j]) / length_penalty(len(seq), alpha), seq))
          continue
        parents[b, chosen], tokens[b, chosen], new_scores[b, chosen] = beam, token, total[b, j]
        new_live[b][chosen] = seq
        chosen += 1
        if chosen == k:
          break
      finished[b] = sorted(finished[b], key=lambda h: -h[0])[:k]
      best_live = new_scores[b].max() / length_penalty(t + 1, alpha)
      done[b] = len(finished[b]) >= k and best_live <= finished[b][-1][0]
    scores, live = new_scores, new_live
    if done.all() or t + 1 == cfg.max_new_tokens:
      break
    flat_parents = (np.arange(batch)[:, None] * k + parents).reshape(-1)
    logp, ids = scorer(flat_parents, tokens.reshape(-1))
  out = []
  for b in range(batch):
    pool = list(finished[b])
    if not done[b]:
      pool += [(float(s) / length_penalty(len(seq), alpha), seq)
               for s, seq in zip(scores[b], live[b]) if np.isfinite(s)]
    out.append(max(pool, key=lambda h: h[0])[1] if pool else [])
  return out


def _reorder(cache, parents):
  """The cache rows of the hypotheses that continue: batch axis 1 of a stacked cache
  ([L, B, S, N, H]), 0 of a per-layer one."""
  if isinstance(cache, dict):
    return {n: jnp.take(x, parents, axis=1) if n in ("k", "v") else x for n, x in cache.items()}
  return [{n: jnp.take(x, parents, axis=0) for n, x in layer.items()} for layer in cache]


@functools.lru_cache(maxsize=32)
def _beam_compiled(graphdef, candidates: int, penalty: float, ngram: int):
  def best(logits, buffer, valid, index):
    """The best next tokens for slot `index` of each row (its hypothesis in `buffer`)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jax.lax.top_k(penalize(logp, buffer, valid, index, penalty, ngram), candidates)

  def step(params, cache, parents, tokens, positions, valid, index, buffer):
    model = nnx.merge(graphdef, params)
    logits, cache = model.decode(tokens[:, None], positions[:, None], _reorder(cache, parents),
                                 index, valid)
    return best(logits[:, 0], buffer, valid, index + 1), cache

  return jax.jit(best), jax.jit(step, donate_argnums=1)


def beam_search(model: nnx.Module, prompts: list[list[int]], cfg: BeamConfig, *,
                bucket: int = 16) -> list[list[int]]:
  """The best continuation of each prompt by beam search (see `beam_loop`), decoded with the
  key/value cache: B x K rows, the cache rows reordered to follow their hypotheses."""
  batch, k = len(prompts), cfg.beam_size
  if k < 1:
    raise ValueError(f"beam_size {k} must be >= 1")
  longest = max(len(p) for p in prompts)
  if longest == 0:
    raise ValueError("every prompt needs at least one token")
  if longest + cfg.max_new_tokens > model.cfg.max_position:
    raise ValueError(f"prompt ({longest}) + max_new_tokens ({cfg.max_new_tokens}) exceeds the "
                     f"model's {model.cfg.max_position} positions")
  width = -(-longest // bucket) * bucket
  total = width + cfg.max_new_tokens
  rows = batch * k
  buffer = np.zeros((rows, total), np.int32)
  positions = np.zeros((rows, total), np.int32)
  valid = np.zeros((rows, total), bool)
  lengths = np.zeros(rows, np.int32)
  for r in range(rows):                               # left-padded, as in `generate`
    p = prompts[r // k]
    buffer[r, width - len(p):width] = p
    positions[r, width - len(p):width] = np.arange(len(p))
    valid[r, width - len(p):width] = True
    lengths[r] = len(p)
  graphdef, params = nnx.split(model, nnx.Param)
  prefill = _compiled(graphdef, SamplingConfig(max_new_tokens=cfg.max_new_tokens), rows,
                      width)[0]
  first, step = _beam_compiled(graphdef, min(2 * k, model.cfg.vocab_size),
                               cfg.repetition_penalty, cfg.no_repeat_ngram_size)
  logits, cache = prefill(params, jnp.asarray(buffer), jnp.asarray(positions),
                          jnp.asarray(valid))
  state = {"cache": cache, "t": 0, "buffer": buffer}

  def scorer(parents, tokens):
    if parents is None:
      values, ids = first(logits, jnp.asarray(buffer), jnp.asarray(valid), width)
    else:
      t = state["t"]
      valid[:, width + t] = True
      # each row's hypothesis so far (its parent's, then its new token), for the penalties
      state["buffer"] = state["buffer"][parents]
      state["buffer"][:, width + t] = tokens
      (values, ids), state["cache"] = step(params, state["cache"], jnp.asarray(parents),
                                           jnp.asarray(tokens, jnp.int32),
                                           jnp.asarray(lengths + t), jnp.asarray(valid),
                                           width + t, jnp.asarray(state["buffer"]))
      state["t"] = t + 1
    values, ids = jax.device_get((values, ids))
    return values.reshape(batch, k, -1), ids.reshape(batch, k, -1)

  return beam_loop(scorer, batch, cfg)
