"""GPT-2 (Radford et al., 2019): pre-LN decoder, learned positions, final LayerNorm, tied LM
head; an incremental decode path with a key/value cache for generation."""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from plm_jax.models import layer_stack
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

  def decode(self, x, cache: dict, index, key_valid):
    y, cache = self.attention.decode(self.attention_norm(x), cache, index, key_valid)
    x = x + y
    return x + self.mlp(self.mlp_norm(x)), cache


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
    blocks = [PreLNBlock(block, cfg.num_layers, rngs=rngs) for _ in range(cfg.num_layers)]
    self.layers = layer_stack.stack(blocks) if cfg.scan_layers else nnx.List(blocks)
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
    x = layer_stack.run(self.layers, x, mask, keys, num_layers=self.cfg.num_layers,
                        remat=self.cfg.remat, scan=self.cfg.scan_layers)
    return self.final_norm(x)

  def lm_output(self) -> tuple[jax.Array, None]:
    """The output layer (table [V, H], bias): GPT-2's LM head is the token embedding, no bias."""
    return self.wte.embedding[...], None

  def init_cache(self, batch: int, length: int, dtype=None) -> list[dict] | dict:
    """Empty key/value cache for `length` slots: {"k", "v"} of [L, B, length, N, H] for
    stacked layers, else one such dict (without L) per layer."""
    heads = self.cfg.num_heads
    shape = (batch, length, heads, self.cfg.hidden_size // heads)
    dtype = dtype or self.cfg.compute_dtype
    if layer_stack.is_stacked(self.layers):
      shape = (self.cfg.num_layers, *shape)
      return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
    return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
            for _ in range(self.cfg.num_layers)]

  def decode(self, input_ids, positions, cache, index, key_valid):
    """Incremental forward: the t new tokens [B, t] at cache slots [index, index + t) ->
    (logits [B, t, V] float32, updated cache). Prefill is a call with the whole prompt."""
    x = self.wte(input_ids) + self.wpe(positions)
    x, new_cache = layer_stack.decode(self.layers, x, cache, index, key_valid)
    logits = self.wte.attend(self.final_norm(x))
    return logits.astype(jnp.float32), new_cache

  def __call__(self, input_ids, attention_mask=None, segment_ids=None, positions=None,
               dropout_rng=None):
    """Returns {"logits": [B, T, V]} in float32."""
    h = self.hidden_states(input_ids, attention_mask, segment_ids, positions, dropout_rng)
    logits = constrain(self.wte.attend(h), ("batch", "length", "vocab"))
    return {"logits": logits.astype(jnp.float32)}
