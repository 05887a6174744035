"""Model FLOPs per token and accelerator peaks, for MFU.

Two conventions. What plm-jax's step computes (`computed_flops_per_step`, one formula for every
family: `compare`'s budget, `plan`'s FLOPs per step and `bench`'s MFU as computed): the matrix
products of the step, forward and backward, counted from the shapes the step runs (the output
layer where it is applied, every depth of ALBERT's shared layer, XLNet's two streams, its
memory keys and relative positions); tests/test_flops.py holds it to XLA's own count of each
family's compiled step.

The references' convention (`Family.flops_per_token`), kept to compare with published MFU:
conventions match `shared/bench/reference_h200.py`, so plm-jax and the PyTorch references are
compared on the same scale (each family's registry entry names its formula):
  decoders (GPT):  6 N + 12 L d T, N = parameters without the token and position embeddings.
  encoders (BERT): 6 N + 12 L d T + 6 V d, N = parameters without the word embeddings
        (transformers counts the MLM decoder over every position; plm-jax computes it only at
        the ~15% chosen positions, so its *hardware* FLOPs are lower than this model-FLOPs
        figure).

"""

import dataclasses

# Dense bf16 peak FLOP/s per chip, from the vendors' datasheets.
PEAK_FLOPS = {
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v5": 459e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}


def peak_flops(device_kind: str) -> float | None:
  """Peak for a jax `device_kind` string (e.g. 'NVIDIA H200'), or None if unknown (CPU)."""
  for name in sorted(PEAK_FLOPS, key=len, reverse=True):
    if name.lower() in device_kind.lower():
      return PEAK_FLOPS[name]
  return None


def decoder_flops_per_token(n_params: int, *, vocab: int, hidden: int, layers: int,
                            seq_len: int, max_position: int) -> float:
  non_embedding = n_params - vocab * hidden - max_position * hidden
  return 6 * non_embedding + 12 * layers * hidden * seq_len


def encoder_flops_per_token(n_params: int, *, vocab: int, hidden: int, layers: int,
                            seq_len: int, max_position: int) -> float:
  del max_position      # the position table is counted like any other parameter
  non_embedding = n_params - vocab * hidden
  return 6 * non_embedding + 12 * layers * hidden * seq_len + 6 * vocab * hidden


def shared_layer_encoder_flops_per_token(n_params: int, *, vocab: int, hidden: int,
                                         layers: int, seq_len: int, max_position: int) -> float:
  """ALBERT: the encoder's count with its one shared layer counted at each of the `layers`
  depths it is applied at (6 N counts parameters, and a shared layer's are stored once but
  computed L times). The layer's parameters are taken as 12 d^2 + 13 d (an MLP of 4 d, as in
  every ALBERT size)."""
  layer = 12 * hidden * hidden + 13 * hidden
  return encoder_flops_per_token(n_params + (layers - 1) * layer, vocab=vocab, hidden=hidden,
                                 layers=layers, seq_len=seq_len, max_position=max_position)


def xlnet_flops_per_token(n_params: int, *, vocab: int, hidden: int, layers: int,
                          seq_len: int, max_position: int) -> float:
  """XLNet: the encoder's count for the content stream, plus what relative attention adds
  (scores against ~2T position encodings, 12 L d T, and their projection, 12 L d^2), plus the
  query stream over the 1/K = 1/6 of positions it predicts (its layers and attention)."""
  del max_position      # relative positions: no table
  non_embedding = n_params - vocab * hidden
  attention = 12 * layers * hidden * seq_len
  content = 6 * non_embedding + 2 * attention + 12 * layers * hidden * hidden
  query = (6 * non_embedding + 2 * attention) / 6
  return content + query + 6 * vocab * hidden


@dataclasses.dataclass(frozen=True)
class StepShape:
  """The dimensions a pretraining step's FLOPs depend on (plm_jax.data.loader.step_shape)."""
  rows: int               # examples in the step (the global batch)
  seq_len: int
  layers: int             # depths applied (ALBERT's one shared layer counts at each)
  hidden: int
  mlp: int
  vocab: int
  embed: int              # the word embeddings' width (ALBERT: e < hidden, projected to it)
  outputs: int            # positions per sequence the output layer (tied decoder) is applied at
  segments: int = 1       # sequences of seq_len in a row (XLNet's chain of segments)
  head_transform: bool = False   # the MLM head's dense hidden -> embed before the decoder
  pair_head: bool = False        # the pooler and NSP / SOP classifier on the first token
  memory: float = 0.0            # memory positions a segment attends to, on average
  query: int = 0                 # positions of XLNet's query stream per segment; > 0: XLNet's
                                 # two-stream relative attention, read from the query stream
  activation: str = "gelu"       # the MLP's: "gelu" (exact erf) or "gelu_new" (tanh)


# Elementwise FLOPs, forward and backward, as XLA counts them: per MLP activation (the exact
# GELU's erf is a long polynomial) and, per hidden unit and layer, the LayerNorms, residuals,
# biases and softmax. Estimated from XLA's count of the tiny steps compiled on a CPU (the erf
# alone: 64 a unit); the matrix products are counted exactly. They are a few percent of a tiny
# step and under 1% from d = 768 on; tests/test_flops.py checks the whole at a second shape too.
ACTIVATION_FLOPS = {"gelu": 135, "gelu_new": 60}
HIDDEN_ELEMENTWISE_FLOPS = 100


def computed_flops_per_step(s: StepShape) -> float:
  """The FLOPs of one train step, forward and backward, as the step computes them: its matrix
  products (2 per multiply-add, the backward twice the forward: 6 per weight and position) and
  its elementwise work.

  Per sequence of T tokens, at each of L depths: the q/k/v/output projections and the MLP
  (6 (4 d^2 + 2 d m) T), the attention scores and their weighted sum over the K keys
  (6 2 T K d, and one more T K d product: the backward makes the scores again), the
  elementwise work of every position (ACTIVATION_FLOPS m + HIDDEN_ELEMENTWISE_FLOPS d). The
  output layer: the tied decoder (6 V e) at each position it is applied at, after the MLM head's
  transform (6 d e); ALBERT's factorised embeddings project e -> d at every token.

  XLNet (query > 0) reads its query stream: the content stream's last layer computes only the
  keys and values the query stream attends to (the compiler drops the rest). Its keys are the
  segment and its memory M (projected without an input gradient: 8 M d^2); the 2 T + M relative
  encodings are projected once a segment (4 R d^2: constants, no input gradient) and scored by
  every query (6 T R d); the query stream runs its q, output and MLP over P positions
  (6 (2 d^2 + 2 d m) P) and scores them against every key and encoding (its own kernel keeps
  the scores). Not counted: dropout's random bits (their cost depends on the generator: XLA's
  threefry on a CPU charges ~47 per dropped unit) and the optimizer (per parameter, not per
  token)."""
  t, d, m, l, p = s.seq_len, s.hidden, s.mlp, s.layers, s.query
  keys = t + s.memory
  elementwise = ACTIVATION_FLOPS.get(s.activation, ACTIVATION_FLOPS["gelu"]) * m \
      + HIDDEN_ELEMENTWISE_FLOPS * d
  projections = 6 * (4 * d * d + 2 * d * m)
  if p:
    positions = 2 * t + s.memory
    content = (projections + elementwise) * t + 6 * 2 * t * keys * d \
        + 6 * t * positions * d + 8 * s.memory * d * d
    query = ((6 * (2 * d * d + 2 * d * m) + elementwise) * p + 6 * 2 * p * keys * d
             + 6 * p * positions * d + 8 * s.memory * d * d)
    per_sequence = ((l - 1) * content + 6 * 2 * d * d * t + l * query
                    + 6 * s.vocab * s.embed * s.outputs)
    return float(per_sequence * s.rows * s.segments
                 + l * s.segments * 4 * positions * d * d)
  per_sequence = l * ((projections + elementwise) * t + 7 * 2 * t * keys * d) \
      + 6 * s.vocab * s.embed * s.outputs
  if s.embed != d:
    per_sequence += 6 * s.embed * d * t
  if s.head_transform:
    per_sequence += 6 * d * s.embed * s.outputs
  if s.pair_head:
    per_sequence += 6 * (d * d + 2 * d)
  return float(per_sequence * s.rows * s.segments)
