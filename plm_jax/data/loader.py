"""Example arrays -> deterministic, resumable, per-host global batches, with Grain.

The train stream is a Grain `MapDataset`: each source's examples are shuffled with the seed
(reshuffled every epoch) and repeated, sources are mixed by weight, and element i of the stream
is a pure function of (seed, i). Each process reads only its share: of the global batch of B
rows of step s (stream elements sB .. sB+B-1), the rows its devices hold (`process_rows`);
`to_global` assembles them into sharded `jax.Array`s, so the global batch is the same row for
row on any number of processes. BERT's masks are drawn when
an example is served, from an rng seeded by (seed, split, element index): dynamic (a new mask
each epoch) and independent of the number of processes.

`iterator()` prepares the next batches in a background thread while the device computes (a
batch is masked in a few vectorised numpy calls; Grain's per-element threads cost more than they
saved here). Its state is `{"next_index": step, "next_example": e}`, saved in every
checkpoint: the next step and the next stream element, so a resumed run sees exactly the batches
an uninterrupted run would have seen, and one with another global batch size goes on with the
very examples not yet seen (its batches start at element e: none repeated, none skipped).
"""

import math
import queue
import threading

import grain
import jax
import numpy as np

from plm_jax import objectives
from plm_jax.data.pipeline import PreparedData
from plm_jax.hardware.flops import StepShape
from plm_jax.models.partitioning import BATCH_AXES
from plm_jax.objectives.masking import (MaskingConfig, example_uniforms, mask_tokens,
                                        max_predictions_for)
from plm_jax.objectives.permutation import (PermutationConfig, num_predict_for,
                                            permutation_targets)

TRAIN, EVAL = 0, 1


class Rows:
  """Grain source: row i of a dict of equally long arrays (in memory or memory-mapped)."""

  def __init__(self, arrays: dict):
    self.arrays = arrays
    self.length = len(next(iter(arrays.values())))

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, i: int) -> dict:
    return {k: np.asarray(v[i]) for k, v in self.arrays.items()}


class ProcessRows:
  """Row j of this process is row rows[j % L] of the global batch of step j // L, that is stream
  element offset + (j // L) * B + rows[j % L], returned with that index (masks are a function
  of it). `offset` is 0 unless a run resumed with another batch size (Batches.iterator)."""

  def __init__(self, stream, rows, global_batch: int, process_count: int):
    self.stream, self.rows = stream, np.asarray(rows)
    self.global_batch, self.n = global_batch, process_count
    self.offset = 0

  def __len__(self) -> int:
    return len(self.stream) // self.n

  def __getitem__(self, j: int) -> dict:
    step, r = divmod(j, len(self.rows))
    index = self.offset + step * self.global_batch + int(self.rows[r])
    return {**self.stream[index], "index": index}


def process_rows(mesh, process_index: int, global_batch: int) -> np.ndarray:
  """The rows of a global batch, split over the mesh's batch axes (data, fsdp), that the
  devices of `process_index` hold, in increasing order. On TPU slices a host's devices are
  not one contiguous block of the batch (e.g. blocks 0, 1, 16, 17 of 256 on a v5e-256)."""
  names = list(mesh.axis_names)
  order = [names.index(a) for a in BATCH_AXES] + [i for i, a in enumerate(names)
                                                   if a not in BATCH_AXES]
  devices = np.transpose(mesh.devices, order)
  blocks = int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
  per_block = global_batch // blocks
  by_block = devices.reshape(blocks, -1)
  mine = [b for b in range(blocks) if any(d.process_index == process_index
                                          for d in by_block[b])]
  return np.concatenate([np.arange(b * per_block, (b + 1) * per_block) for b in mine])


def masking_config(config, tokenizer) -> MaskingConfig:
  o = config.objective
  return MaskingConfig(
      mask_id=tokenizer.mask_id, random_token_ids=tokenizer.regular_ids(),
      max_predictions=objectives.of(config).predictions(config),
      mlm_probability=o.mlm_probability, span=o.masking, max_ngram=o.max_ngram,
      word_starts=None if o.masking == "token" else tokenizer.word_starts())


def permutation_config(config, tokenizer) -> PermutationConfig:
  o, t = config.objective, config.data.max_seq_length
  return PermutationConfig(
      seq_len=t, reuse_len=o.reuse_len, num_predict=num_predict_for(t, o.plm_k),
      word_starts=tokenizer.word_starts(),
      functional_ids=np.array([tokenizer.sep_id, tokenizer.cls_id]), max_ngram=o.max_ngram,
      alpha=o.span_alpha, beta=o.span_beta)


class Server:
  """Turns a batch of stored examples into what the model is fed (the per-serving step).

  `index` holds each row's position in the whole data stream: BERT's masks are a function of it.
  """

  def __init__(self, config, prepared: PreparedData, split: int):
    self.seed, self.split = config.train.seed, split
    self.builder, self.objective = prepared.builder, objectives.of(config)
    tok = prepared.tokenizer
    self.masking = (masking_config(config, tok)
                    if isinstance(self.objective, objectives.MaskedLM) else None)
    self.special = tok.special_ids()
    self.permutation = permutation_config(config, tok) if self.objective.permuted else None
    # Classification (and generation) eval splits are served once, padded to whole batches: rows past the end
    # of the split repeat earlier ones with weight 0.
    self.rows = len(Rows(prepared.eval)) if split == EVAL else None

  def __call__(self, batch: dict) -> dict:
    index = batch.pop("index")
    if self.objective.rows:
      weights = np.ones(len(index), np.float32) if self.rows is None else \
          (index < self.rows).astype(np.float32)
      return {**batch, "example_weights": weights}
    if self.permutation is not None:
      return {**batch, **permutation_targets(batch["input_ids"], index, self.seed, self.split,
                                             self.permutation)}
    if self.masking is not None:
      ids = batch["input_ids"]
      special = np.isin(ids, self.special) | (batch["attention_mask"] == 0)
      uniforms = example_uniforms(self.seed, self.split, index, ids.shape[1],
                                  self.masking.max_predictions,
                                  span_lengths=self.masking.span == "ngram")
      return {**batch, **mask_tokens(ids, special, uniforms, self.masking)}
    tokens = batch["tokens"]
    out = {"input_ids": tokens[:, :-1].astype(np.int32),
           "labels": tokens[:, 1:].astype(np.int32)}
    if self.builder == "packed" or self.objective.completions_only:
      seg = batch["segment_ids"]
      out["segment_ids"] = seg[:, :-1].astype(np.int32)
      out["positions"] = batch["positions"][:, :-1].astype(np.int32)
      out["attention_mask"] = (seg[:, :-1] > 0).astype(np.int32)
      out["label_weights"] = ((seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)).astype(np.float32)
      if self.objective.completions_only:
        # Generation fine-tuning: the loss on the completions only (plm_jax/finetune/seq2seq/data.py);
        # eval rows past the end of the split (padding the last batch) weigh nothing.
        out["label_weights"] *= batch["targets"][:, 1:] > 0
        if self.rows is not None:
          out["label_weights"] *= (index < self.rows)[:, None]
    else:
      out["attention_mask"] = np.ones_like(out["input_ids"])
      out["label_weights"] = np.ones(out["input_ids"].shape, np.float32)
    return out


class Prefetcher:
  """Prepares the batches of the next steps in a background thread while the device computes.

  Its state is `state_of(next step)`: the next step and the stream element its batch starts
  at, `{"next_index": step, "next_example": e}` (just the step without `state_of`).
  """

  def __init__(self, batch_fn, next_index: int, depth: int, state_of=None):
    self._batch_fn, self._next = batch_fn, next_index
    self._state_of = state_of
    self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, args=(next_index,), daemon=True)
    self._thread.start()

  def _run(self, step: int) -> None:
    while not self._stop.is_set():
      try:
        item = (step, self._batch_fn(step), None)
      except Exception as e:  # noqa: BLE001 - handed to the consumer, raised there
        item = (step, None, e)
      while not self._stop.is_set():
        try:
          self._queue.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if item[2] is not None:
        return
      step += 1

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    step, batch, error = self._queue.get()
    if error is not None:
      raise error
    self._next = step + 1
    return batch

  def get_state(self) -> dict:
    if self._state_of is None:
      return {"next_index": self._next}
    return self._state_of(self._next)

  def close(self, timeout: float = 30.0) -> None:
    """Stops the thread and waits for the batch it is making: a daemon thread still inside
    native code when the interpreter exits aborts the process (exit status 134)."""
    self._stop.set()
    if self._thread is not threading.current_thread():
      self._thread.join(timeout)


class Batches:
  """The batches of one split for this process: random access by step, or a prefetching
  iterator with a checkpointable position."""

  def __init__(self, config, prepared: PreparedData, split: int, *,
               process_index: int | None = None, process_count: int | None = None,
               mesh=None):
    """`mesh`: the run's mesh, whose batch axes decide which rows of a global batch land on
    this process's devices (default: the p-th contiguous block of rows)."""
    self.config, self.split = config, split
    p = jax.process_index() if process_index is None else process_index
    n = jax.process_count() if process_count is None else process_count
    self.global_batch = config.train.batch_size
    self.local_batch = self.global_batch // n
    rows = process_rows(mesh, p, self.global_batch) if mesh is not None and n > 1 else \
        np.arange(p * self.local_batch, (p + 1) * self.local_batch)
    seed = config.train.seed
    if split == TRAIN:
      parts = [grain.MapDataset.source(Rows(a)).shuffle(seed=seed + 7919 * i).repeat(None)
               for i, a in enumerate(prepared.train)]
      stream = parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, prepared.weights)
      self.num_examples = sum(len(Rows(a)) for a in prepared.train)
    else:
      stream = grain.MapDataset.source(Rows(prepared.eval)).repeat(None)
      self.num_examples = len(Rows(prepared.eval))
    server = Server(config, prepared, split)
    # This process reads exactly the rows of each global batch that its devices hold, in
    # increasing order (as make_array_from_process_local_data places them): the global batch
    # is then the same, row for row, on any number of processes, and so are its dropout masks
    # and its loss.
    self._rows = ProcessRows(stream, rows, self.global_batch, n)
    self.dataset = grain.MapDataset.source(self._rows).batch(self.local_batch).map(server)

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of the global batch of `step`."""
    return self.dataset[step]

  def iterator(self, state: dict | None = None) -> Prefetcher:
    """Batches from `state["next_index"]` on, prepared `data.prefetch` steps ahead in a
    background thread; `get_state()` gives the position to save in a checkpoint. With
    `state["next_example"]` the batch of that step starts at that stream element, whatever
    batch size the state was saved with (a state without it: at step x this batch size)."""
    start = self.resume(state)
    return Prefetcher(self.batch, start, self.config.data.prefetch, self.state_at)

  def resume(self, state: dict | None) -> int:
    """Places the stream as `state` says (see `iterator`); returns the step it starts at."""
    state = state or {}
    start = int(state.get("next_index", 0))
    self._rows.offset = int(state.get("next_example", start * self.global_batch)) - \
        start * self.global_batch
    return start

  def position(self, step: int) -> int:
    """The stream element the global batch of `step` starts at."""
    return self._rows.offset + step * self.global_batch

  def offset(self, step: int) -> int:
    """Elements the stream of `step` is moved by from step x batch size: not 0 after a resume
    with another batch size."""
    return self._rows.offset

  def state_at(self, step: int) -> dict:
    """The loader position a checkpoint keeps, `step` being the next step."""
    return {"next_index": step, "next_example": self.position(step)}

  def eval_steps(self, requested: int) -> int:
    """Batches that cover the split once, capped at `requested` (0 = no cap)."""
    full = math.ceil(self.num_examples / self.global_batch)
    return full if requested <= 0 else min(full, requested)


def to_global(local: dict[str, np.ndarray], shardings: dict) -> dict[str, jax.Array]:
  """Process-local rows -> global sharded arrays."""
  return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in local.items()}


def segments_per_row(config) -> int:
  """Sequences of max_seq_length in one example: XLNet's chain of segments, else one."""
  return objectives.of(config).segments(config)


def predictions_per_sequence(config) -> int:
  """Positions an encoder predicts in a sequence (the width of its targets)."""
  return objectives.of(config).predictions(config)


def step_shape(config, vocab: int) -> StepShape:
  """What a pretraining step of `config` computes, for plm_jax.hardware.flops.computed_flops_per_step
  (`vocab`: the padded vocabulary the model is built with)."""
  m, o, t = config.model, config.objective, config.data.max_seq_length
  shape = dict(rows=config.train.batch_size, seq_len=t, layers=m.num_layers,
               hidden=m.hidden_size, mlp=m.mlp_dim, vocab=vocab,
               embed=m.embedding_size or m.hidden_size, activation=m.hidden_act)
  objective = objectives.of(config)
  if objective.permuted:
    # every segment after the first attends to the memory the one before kept
    segments, kept = segments_per_row(config), min(m.mem_len, o.reuse_len or t)
    p = num_predict_for(t, o.plm_k)
    return StepShape(**shape, outputs=p, query=p, segments=segments,
                     memory=kept * (segments - 1) / segments)
  if not isinstance(objective, objectives.MaskedLM):
    return StepShape(**shape, outputs=t)
  return StepShape(**shape, outputs=predictions_per_sequence(config), head_transform=True,
                   pair_head=objective.pair is not None)


def batch_shapes(config) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """Shape and dtype of every field of a global batch (for synthetic batches and shardings)."""
  return objectives.of(config).batch_shapes(config)


def synthetic_batch(config, vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Random ids of the right shapes (bench): full-length sequences, 15% positions predicted."""
  rng = np.random.default_rng(seed)
  out = {}
  t = config.data.max_seq_length
  objective = objectives.of(config)
  if objective.permuted:
    return _synthetic_plm(config, vocab_size, rng)
  for name, (shape, dtype) in batch_shapes(config).items():
    if name in ("input_ids", "labels", "masked_labels"):
      out[name] = rng.integers(5, vocab_size, shape).astype(dtype)
    elif name in ("attention_mask", "masked_weights", "label_weights"):
      out[name] = np.ones(shape, dtype)
    elif name == "segment_ids":
      half = (np.arange(t)[None, :] >= t // 2).astype(dtype)
      # packed GPT examples number their documents from 1 (0 is padding); pairs from 0
      out[name] = np.repeat(half + objective.documents_from, shape[0], 0)
    elif name == "positions":
      out[name] = np.repeat(np.arange(t, dtype=dtype)[None, :], shape[0], 0)
    elif name == "masked_positions":
      order = rng.permuted(np.tile(np.arange(1, t), (shape[0], 1)), axis=1)
      out[name] = np.sort(order[:, :shape[1]], axis=1).astype(dtype)
    elif name in ("nsp_labels", "sop_labels"):
      out[name] = rng.integers(0, 2, shape).astype(dtype)
  return out


def _synthetic_plm(config, vocab_size: int, rng) -> dict[str, np.ndarray]:
  """Random XLNet segments ([reused part, A, B] layout) with targets drawn as in training."""
  shapes = batch_shapes(config)
  b, s, t = shapes["input_ids"][0]
  ids = rng.integers(10, vocab_size, (b, s, t)).astype(np.int32)
  seg = np.zeros((b, s, t), np.int32)
  seg[..., (t + config.objective.reuse_len) // 2:] = 1
  seg[..., -1] = 2
  cfg = PermutationConfig(seq_len=t, reuse_len=config.objective.reuse_len,
                          num_predict=shapes["target_positions"][0][2],
                          word_starts=np.ones(vocab_size, bool), functional_ids=np.array([]),
                          max_ngram=config.objective.max_ngram)
  return {"input_ids": ids, "segment_ids": seg, "attention_mask": np.ones_like(ids),
          **permutation_targets(ids, np.arange(b), seed=0, split=TRAIN, cfg=cfg)}


def local_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """This process's rows of a global batch (contiguous, in process order)."""
  n, i = jax.process_count(), jax.process_index()
  per = len(batch["input_ids"]) // n
  return {k: v[i * per:(i + 1) * per] for k, v in batch.items()}
