"""BERT-style encoders: BERT, RoBERTa and ALBERT.

BERT (Devlin et al., 2018): post-LN encoder, pooler, MLM head tied to the embeddings, NSP head.
RoBERTa (Liu et al., 2019): the same network; positions counted past the padding id, one segment
type, no NSP. ALBERT (Lan et al., 2019): factorised embeddings (E projected to H), one set of
layer weights shared by all layers, sentence-order prediction head, tanh-approximate GELU.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from plm_jax.models import layer_stack
from plm_jax.models.config import ModelConfig
from plm_jax.models.layers import (MLP, AttentionMask, BlockConfig, Dense, Embed, KeyStream,
                                   LayerNorm, SelfAttention, dropout, normal_init)
from plm_jax.models.partitioning import constrain


class BertEmbeddings(nnx.Module):
  """word + position + segment embeddings (size E), then LayerNorm and dropout."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    init = normal_init(cfg.initializer_range)
    kw = dict(init=init, dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype, rngs=rngs)
    self.cfg = cfg
    e = cfg.embed_dim
    self.word = Embed(cfg.vocab_size, e, ("vocab", "embed"), **kw)
    self.position = Embed(cfg.max_position, e, ("length", "embed"), **kw)
    self.segment = Embed(cfg.type_vocab_size, e, ("segment", "embed"), **kw)
    self.norm = LayerNorm(e, eps=cfg.layer_norm_eps, dtype=cfg.compute_dtype,
                          param_dtype=cfg.storage_dtype)

  def __call__(self, input_ids, segment_ids, positions, keys: KeyStream | None):
    x = self.word(input_ids) + self.position(positions) + self.segment(segment_ids)
    x = constrain(self.norm(x), ("batch", "length", "act_embed"))
    return dropout(x, self.cfg.dropout_rate, keys)


def default_positions(cfg: ModelConfig, input_ids):
  """0, 1, 2, ... or, for RoBERTa, padding_id + 1 + index among the real tokens (padding keeps
  padding_id), as fairseq and transformers number them."""
  if cfg.position_offset:
    real = (input_ids != cfg.pad_token_id).astype(jnp.int32)
    return jnp.cumsum(real, axis=1) * real + cfg.pad_token_id
  return jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)


class PostLNBlock(nnx.Module):
  """x = LN(x + Attn(x)); x = LN(x + MLP(x)) -- the original Transformer/BERT ordering."""

  def __init__(self, cfg: BlockConfig, *, approximate_gelu: bool = False, rngs: nnx.Rngs):
    self.cfg = cfg
    self.attention = SelfAttention(cfg, rngs=rngs)
    self.attention_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, dtype=cfg.dtype,
                                    param_dtype=cfg.param_dtype)
    self.mlp = MLP(cfg, approximate_gelu=approximate_gelu, rngs=rngs)
    self.mlp_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, dtype=cfg.dtype,
                              param_dtype=cfg.param_dtype)

  def __call__(self, x, mask: AttentionMask, key: jax.Array | None):
    keys = KeyStream(key)
    x = self.attention_norm(x + dropout(self.attention(x, mask, keys), self.cfg.dropout_rate, keys))
    return self.mlp_norm(x + dropout(self.mlp(x), self.cfg.dropout_rate, keys))


class BertEncoder(nnx.Module):
  """Embeddings + the stack of post-LN blocks + the [CLS] pooler (BertModel / AlbertModel)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    block = cfg.block()
    approximate = cfg.hidden_act == "gelu_new"
    self.embeddings = BertEmbeddings(cfg, rngs=rngs)
    # ALBERT: embeddings of size E are projected to the hidden size H.
    self.projection = Dense(cfg.embed_dim, (cfg.hidden_size,), ("embed", "mlp"),
                            init=normal_init(cfg.initializer_range), dtype=cfg.compute_dtype,
                            param_dtype=cfg.storage_dtype, rngs=rngs) \
        if cfg.embed_dim != cfg.hidden_size else None
    count = 1 if cfg.shared_layers else cfg.num_layers
    blocks = [PostLNBlock(block, approximate_gelu=approximate, rngs=rngs) for _ in range(count)]
    self.layers = (layer_stack.stack(blocks) if cfg.scan_layers and count > 1
                   else nnx.List(blocks))
    self.pooler = Dense(cfg.hidden_size, (cfg.hidden_size,), ("embed", "mlp"),
                        init=normal_init(cfg.initializer_range), dtype=cfg.compute_dtype,
                        param_dtype=cfg.storage_dtype, rngs=rngs)

  def __call__(self, input_ids, segment_ids=None, attention_mask=None, positions=None,
               dropout_rng=None):
    """Returns (sequence_output [B, T, H], pooled_output [B, H])."""
    if segment_ids is None:
      segment_ids = jnp.zeros_like(input_ids)
    if positions is None:
      positions = default_positions(self.cfg, input_ids)
    keys = KeyStream(dropout_rng) if dropout_rng is not None else None
    mask = AttentionMask(padding=None if attention_mask is None else attention_mask.astype(bool))
    x = self.embeddings(input_ids, segment_ids, positions, keys)
    if self.projection is not None:
      x = constrain(self.projection(x), ("batch", "length", "act_embed"))
    # ALBERT applies its one shared layer num_layers times.
    x = layer_stack.run(self.layers, x, mask, keys, num_layers=self.cfg.num_layers,
                        remat=self.cfg.remat, scan=self.cfg.scan_layers)
    pooled = jnp.tanh(self.pooler(x[:, 0]))
    return x, pooled


class MaskedLMHead(nnx.Module):
  """dense (H -> E) + GELU + LayerNorm, then the decoder tied to the word embeddings + bias."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.approximate = cfg.hidden_act == "gelu_new"
    self.transform = Dense(cfg.hidden_size, (cfg.embed_dim,), ("mlp", "embed"),
                           init=normal_init(cfg.initializer_range), dtype=cfg.compute_dtype,
                           param_dtype=cfg.storage_dtype, rngs=rngs)
    self.norm = LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps, dtype=cfg.compute_dtype,
                          param_dtype=cfg.storage_dtype)
    self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), cfg.storage_dtype), axes=("vocab",))

  def features(self, hidden):
    """What the tied decoder reads: LayerNorm(GELU(dense(hidden))), [.., E]."""
    return self.norm(jax.nn.gelu(self.transform(hidden), approximate=self.approximate))


def gather_positions(sequence: jax.Array, positions: jax.Array) -> jax.Array:
  """[B, T, H] x [B, P] -> [B, P, H]: the hidden states at the masked positions only."""
  return jnp.take_along_axis(sequence, positions[..., None].astype(jnp.int32), axis=1)


class BertForPreTraining(nnx.Module):
  """An encoder with the MLM head and (unless cfg.nsp_head is off) the sentence-pair head: NSP
  for BERT, SOP for ALBERT. The MLM logits are computed at the chosen positions only."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.encoder = BertEncoder(cfg, rngs=rngs)
    self.mlm = MaskedLMHead(cfg, rngs=rngs)
    self.nsp = Dense(cfg.hidden_size, (2,), ("embed", "classes"),
                     init=normal_init(cfg.initializer_range), dtype=cfg.compute_dtype,
                     param_dtype=cfg.storage_dtype, rngs=rngs) if cfg.nsp_head else None

  def lm_output(self) -> tuple[jax.Array, jax.Array]:
    """The MLM decoder (table [V, E], bias [V]): tied to the word embeddings."""
    return self.encoder.embeddings.word.embedding[...], self.mlm.bias[...]

  def features(self, input_ids, segment_ids, attention_mask, masked_positions,
               dropout_rng=None) -> dict:
    """{"mlm_features": [B, P, E] (what the decoder reads at the chosen positions),
    "pair_logits": [B, 2] float32 (absent without a sentence-pair head)}."""
    sequence, pooled = self.encoder(input_ids, segment_ids, attention_mask,
                                    dropout_rng=dropout_rng)
    out = {"mlm_features": self.mlm.features(gather_positions(sequence, masked_positions))}
    if self.nsp is not None:
      out["pair_logits"] = self.nsp(pooled).astype(jnp.float32)
    return out

  def __call__(self, input_ids, segment_ids, attention_mask, masked_positions,
               dropout_rng=None):
    """Returns {"mlm_logits": [B, P, V], "pair_logits": [B, 2]} (float32): the sentence-pair
    head is NSP for BERT and SOP for ALBERT; absent when the model has none."""
    out = self.features(input_ids, segment_ids, attention_mask, masked_positions, dropout_rng)
    h = out.pop("mlm_features")
    logits = self.encoder.embeddings.word.attend(h) + self.mlm.bias[...].astype(h.dtype)
    return {"mlm_logits": logits.astype(jnp.float32), **out}
