"""Model FLOPs per token and accelerator peaks, for MFU.

Conventions match `shared/bench/reference_h200.py`, so plm-jax and the PyTorch references are
compared on the same scale (each family's registry entry names its formula):
  decoders (GPT):  6 N + 12 L d T, N = parameters without the token and position embeddings.
  encoders (BERT): 6 N + 12 L d T + 6 V d, N = parameters without the word embeddings
        (transformers counts the MLM decoder over every position; plm-jax computes it only at
        the ~15% chosen positions, so its *hardware* FLOPs are lower than this model-FLOPs
        figure).

`flops_as_computed` counts instead what plm-jax's step computes: for GPT the tied LM head too
(6 V d per token, which the nanoGPT convention leaves out), for encoders the MLM decoder only at
the chosen positions.
"""

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


def flops_as_computed(reference: float, *, decoder: bool, vocab: int, hidden: int, embed: int,
                      predictions_per_token: float) -> float:
  """Model FLOPs per token counting the output layer as the step computes it."""
  if decoder:
    return reference + 6 * vocab * hidden                      # the tied LM head, every token
  return reference - 6 * vocab * hidden + 6 * vocab * embed * predictions_per_token


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
