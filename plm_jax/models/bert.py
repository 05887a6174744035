"""BERT (Devlin et al., 2018): post-LN encoder, pooler, MLM head tied to the embeddings, NSP head."""

import jax
import jax.numpy as jnp
from flax import nnx

from plm_jax.models.config import ModelConfig
from plm_jax.models.layers import (MLP, AttentionMask, BlockConfig, Dense, Embed, KeyStream,
                                   LayerNorm, SelfAttention, dropout, normal_init)
from plm_jax.models.partitioning import constrain


class BertEmbeddings(nnx.Module):
  """word + position + segment embeddings, then LayerNorm and dropout."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    init = normal_init(cfg.initializer_range)
    kw = dict(init=init, dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype, rngs=rngs)
    self.cfg = cfg
    self.word = Embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), **kw)
    self.position = Embed(cfg.max_position, cfg.hidden_size, ("length", "embed"), **kw)
    self.segment = Embed(cfg.type_vocab_size, cfg.hidden_size, ("segment", "embed"), **kw)
    self.norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, dtype=cfg.compute_dtype,
                          param_dtype=cfg.storage_dtype)

  def __call__(self, input_ids, segment_ids, positions, keys: KeyStream | None):
    x = self.word(input_ids) + self.position(positions) + self.segment(segment_ids)
    x = constrain(self.norm(x), ("batch", "length", "act_embed"))
    return dropout(x, self.cfg.dropout_rate, keys)


class PostLNBlock(nnx.Module):
  """x = LN(x + Attn(x)); x = LN(x + MLP(x)) -- the original Transformer/BERT ordering."""

  def __init__(self, cfg: BlockConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.attention = SelfAttention(cfg, rngs=rngs)
    self.attention_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, dtype=cfg.dtype,
                                    param_dtype=cfg.param_dtype)
    self.mlp = MLP(cfg, approximate_gelu=False, rngs=rngs)
    self.mlp_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, dtype=cfg.dtype,
                              param_dtype=cfg.param_dtype)

  def __call__(self, x, mask: AttentionMask, key: jax.Array | None):
    keys = KeyStream(key)
    x = self.attention_norm(x + dropout(self.attention(x, mask, keys), self.cfg.dropout_rate, keys))
    return self.mlp_norm(x + dropout(self.mlp(x), self.cfg.dropout_rate, keys))


def run_blocks(blocks, x, mask: AttentionMask, keys: KeyStream | None, remat: bool):
  """Applies the blocks in order, each with its own dropout key, optionally rematerialised."""
  call = nnx.remat(lambda block, h, m, k: block(h, m, k)) if remat else (
      lambda block, h, m, k: block(h, m, k))
  for block in blocks:
    x = call(block, x, mask, keys.next() if keys is not None else None)
  return x


class BertEncoder(nnx.Module):
  """Embeddings + the stack of post-LN blocks + the [CLS] pooler (BertModel)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    block = cfg.block()
    self.embeddings = BertEmbeddings(cfg, rngs=rngs)
    self.layers = nnx.List([PostLNBlock(block, rngs=rngs) for _ in range(cfg.num_layers)])
    self.pooler = Dense(cfg.hidden_size, (cfg.hidden_size,), ("embed", "mlp"),
                        init=normal_init(cfg.initializer_range), dtype=cfg.compute_dtype,
                        param_dtype=cfg.storage_dtype, rngs=rngs)

  def __call__(self, input_ids, segment_ids=None, attention_mask=None, positions=None,
               dropout_rng=None):
    """Returns (sequence_output [B, T, H], pooled_output [B, H])."""
    if segment_ids is None:
      segment_ids = jnp.zeros_like(input_ids)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
    keys = KeyStream(dropout_rng) if dropout_rng is not None else None
    mask = AttentionMask(padding=None if attention_mask is None else attention_mask.astype(bool))
    x = self.embeddings(input_ids, segment_ids, positions, keys)
    x = run_blocks(self.layers, x, mask, keys, self.cfg.remat)
    pooled = jnp.tanh(self.pooler(x[:, 0]))
    return x, pooled


class MaskedLMHead(nnx.Module):
  """dense + GELU + LayerNorm, then the decoder tied to the word embeddings, plus a bias."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.transform = Dense(cfg.hidden_size, (cfg.hidden_size,), ("embed", "mlp"),
                           init=normal_init(cfg.initializer_range), dtype=cfg.compute_dtype,
                           param_dtype=cfg.storage_dtype, rngs=rngs)
    self.norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, dtype=cfg.compute_dtype,
                          param_dtype=cfg.storage_dtype)
    self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), cfg.storage_dtype), axes=("vocab",))

  def __call__(self, hidden, word_embeddings: Embed):
    h = self.norm(jax.nn.gelu(self.transform(hidden), approximate=False))
    logits = word_embeddings.attend(h) + self.bias[...].astype(h.dtype)
    return logits.astype(jnp.float32)


def gather_positions(sequence: jax.Array, positions: jax.Array) -> jax.Array:
  """[B, T, H] x [B, P] -> [B, P, H]: the hidden states at the masked positions only."""
  return jnp.take_along_axis(sequence, positions[..., None].astype(jnp.int32), axis=1)


class BertForPreTraining(nnx.Module):
  """BERT with the MLM and NSP heads. The MLM logits are computed at the chosen positions only."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.encoder = BertEncoder(cfg, rngs=rngs)
    self.mlm = MaskedLMHead(cfg, rngs=rngs)
    self.nsp = Dense(cfg.hidden_size, (2,), ("embed", "classes"),
                     init=normal_init(cfg.initializer_range), dtype=cfg.compute_dtype,
                     param_dtype=cfg.storage_dtype, rngs=rngs) if cfg.nsp_head else None

  def __call__(self, input_ids, segment_ids, attention_mask, masked_positions,
               dropout_rng=None):
    """Returns {"mlm_logits": [B, P, V], "nsp_logits": [B, 2]} (float32; no NSP logits when
    the model has no NSP head)."""
    sequence, pooled = self.encoder(input_ids, segment_ids, attention_mask,
                                    dropout_rng=dropout_rng)
    picked = gather_positions(sequence, masked_positions)
    out = {"mlm_logits": self.mlm(picked, self.encoder.embeddings.word)}
    if self.nsp is not None:
      out["nsp_logits"] = self.nsp(pooled).astype(jnp.float32)
    return out
