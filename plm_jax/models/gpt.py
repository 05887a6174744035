"""GPT-2 (Radford et al., 2019): pre-LN decoder, learned positions, final LayerNorm, tied LM head."""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from plm_jax.models.bert import run_blocks
from plm_jax.models.config import ModelConfig
from plm_jax.models.layers import (MLP, AttentionMask, BlockConfig, Embed, KeyStream, LayerNorm,
                                   SelfAttention, dropout, normal_init)
from plm_jax.models.partitioning import constrain


class PreLNBlock(nnx.Module):
  """x = x + Attn(LN(x)); x = x + MLP(LN(x)), with GPT-2's tanh-approximate GELU."""

  def __init__(self, cfg: BlockConfig, num_layers: int, *, rngs: nnx.Rngs):
    self.cfg = cfg
    # GPT-2 scales the residual projections' init by 1/sqrt(2 * n_layer).
    out_init = normal_init(cfg.initializer_range / math.sqrt(2 * num_layers))
    norm = dict(eps=cfg.layer_norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    self.attention_norm = LayerNorm(cfg.hidden_size, **norm)
    self.attention = SelfAttention(cfg, out_init=out_init, rngs=rngs)
    self.mlp_norm = LayerNorm(cfg.hidden_size, **norm)
    self.mlp = MLP(cfg, approximate_gelu=True, out_init=out_init, rngs=rngs)

  def __call__(self, x, mask: AttentionMask, key: jax.Array | None):
    keys = KeyStream(key)
    x = x + dropout(self.attention(self.attention_norm(x), mask, keys), self.cfg.dropout_rate, keys)
    return x + dropout(self.mlp(self.mlp_norm(x)), self.cfg.dropout_rate, keys)


class GPTLMHeadModel(nnx.Module):
  """GPT-2 with its language-model head tied to the token embeddings."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    kw = dict(init=normal_init(cfg.initializer_range), dtype=cfg.compute_dtype,
              param_dtype=cfg.storage_dtype, rngs=rngs)
    self.wte = Embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), **kw)
    self.wpe = Embed(cfg.max_position, cfg.hidden_size, ("length", "embed"),
                     **{**kw, "init": normal_init(0.01)})
    block = cfg.block()
    self.layers = nnx.List([PreLNBlock(block, cfg.num_layers, rngs=rngs)
                            for _ in range(cfg.num_layers)])
    self.final_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, dtype=cfg.compute_dtype,
                                param_dtype=cfg.storage_dtype)

  def hidden_states(self, input_ids, attention_mask=None, segment_ids=None, positions=None,
                    dropout_rng=None):
    """[B, T] ids -> [B, T, H] final hidden states (after the final LayerNorm)."""
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
    keys = KeyStream(dropout_rng) if dropout_rng is not None else None
    mask = AttentionMask(
        padding=None if attention_mask is None else attention_mask.astype(bool),
        segment_ids=segment_ids, causal=True)
    x = self.wte(input_ids) + self.wpe(positions)
    x = dropout(constrain(x, ("batch", "length", "act_embed")), self.cfg.dropout_rate, keys)
    x = run_blocks(self.layers, x, mask, keys, self.cfg.remat)
    return self.final_norm(x)

  def __call__(self, input_ids, attention_mask=None, segment_ids=None, positions=None,
               dropout_rng=None):
    """Returns {"logits": [B, T, V]} in float32."""
    h = self.hidden_states(input_ids, attention_mask, segment_ids, positions, dropout_rng)
    logits = constrain(self.wte.attend(h), ("batch", "length", "vocab"))
    return {"logits": logits.astype(jnp.float32)}
