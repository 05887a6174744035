"""The small frozen config the models take (never the global ml_collections config)."""

import dataclasses

import jax.numpy as jnp

from plm_jax.models.layers import BlockConfig

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  family: str                 # "bert", "roberta", "albert" (encoders) or "gpt" (decoder)
  vocab_size: int             # rows of the embedding table (padded; see plm_jax.models.build)
  hidden_size: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  max_position: int
  type_vocab_size: int = 2    # BERT segment ids; unused by GPT
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  layer_norm_eps: float = 1e-12
  initializer_range: float = 0.02
  attention_impl: str = "xla"         # "xla", "cudnn" or "splash" (resolved: never "auto")
  dtype: str = "float32"              # compute dtype (resolved: never "auto")
  param_dtype: str = "float32"        # storage dtype of the parameters
  remat: bool = False                 # recompute each block's activations in the backward pass
  scan_layers: bool = True            # run the blocks as one lax.scan (compiled once) rather
                                      # than unrolled; the parameters are the same either way
  nsp_head: bool = True               # encoders: the sentence-pair head (NSP for BERT, SOP for
                                      # ALBERT); off for MLM-only objectives
  embedding_size: int = 0             # ALBERT: factorised embedding size E (0 = hidden_size)
  shared_layers: bool = False         # ALBERT: one set of layer weights applied num_layers times
  hidden_act: str = "gelu"            # encoders: "gelu" (exact erf) or "gelu_new" (tanh approx.)
  pad_token_id: int = 0               # RoBERTa: positions are counted past the padding id
  position_offset: bool = False       # RoBERTa: position = padding_id + 1 + index of real token
  mem_len: int = 0                    # XLNet: memory positions kept from the previous segment
  reuse_len: int = 0                  # XLNet: the leading tokens of a segment kept as memory
                                      # (0 = all)
  clamp_len: int = -1                 # XLNet: relative distances clipped to this (-1: never)
  num_labels: int = 0                 # > 0: a sequence classifier with this many outputs
                                      # (1 = regression) instead of the pretraining heads
  token_labels: bool = False          # with num_labels: a token tagger (one label a position)
  span_head: bool = False             # extractive question answering: start / end logits per
                                      # token instead of the pretraining heads

  @property
  def embed_dim(self) -> int:
    return self.embedding_size or self.hidden_size

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  @property
  def storage_dtype(self):
    return DTYPES[self.param_dtype]

  def block(self) -> BlockConfig:
    return BlockConfig(
        hidden_size=self.hidden_size, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
        dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
        layer_norm_eps=self.layer_norm_eps, initializer_range=self.initializer_range,
        attention_impl=self.attention_impl, dtype=self.compute_dtype,
        param_dtype=self.storage_dtype)


def padded_vocab(config, tokenizer_vocab: int) -> int:
  """Rows of the embedding table: model.vocab_size (or the tokenizer's) rounded up to
  model.vocab_pad_multiple, so the table splits evenly and fills the MXU / tensor cores."""
  size = config.model.vocab_size or tokenizer_vocab
  multiple = max(1, config.model.vocab_pad_multiple)
  return -(-size // multiple) * multiple
