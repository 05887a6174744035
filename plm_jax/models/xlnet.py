"""XLNet (Yang et al., 2019): a permutation language model on a Transformer-XL body.

- Two-stream self-attention: the content stream h sees the tokens allowed by the factorisation
  order and itself; the query stream g (started from a learned mask embedding) sees the same
  context but not the token it predicts. Both streams share every weight.
- Transformer-XL relative positions: scores are content (q + r_w_bias).k, position
  (q + r_r_bias).R(i - j) with sinusoidal R, and relative segments (q + r_s_bias).s, s telling
  only whether two tokens are in the same segment (so a third segment id, <cls>'s 2, is just
  "different").
- Segment-level recurrence: each layer's input for the first `reuse_len` tokens is kept as
  memory (at most `mem_len` positions, no gradient through it) and attended to by the next
  segment of the same text.
- The LM head is tied to the word embeddings, with its own bias.

Not supported (as in transformers' defaults and the released models): `attn_type="uni"`,
`bi_data` (the reference's reversed streams for half the batch), `same_length`.

Tensors are batch-first here (transformers' XLNet is [length, batch] inside); parameter
layouts follow plm-jax's: one fused q/k/v projection, heads as their own axis.

Predictions run the query stream only at the `target_positions` [B, P] (transformers takes a
one-hot `target_mapping` [B, P, T] and runs the stream at every position).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from plm_jax.models import kernel_choice, layer_stack
from plm_jax.models.config import ModelConfig
from plm_jax.models.layers import (MLP, BlockConfig, Dense, DenseIn, Embed, KeyStream,
                                   LayerNorm, dropout, normal_init)
from plm_jax.models.partitioning import constrain

NEG = -1e30            # the masked score, as the reference adds it (a fully masked row is uniform)
_ACT = ("batch", "length", "act_embed")
# Relative positions and two streams: scores the fused kernels cannot take.
_RELATIVE = kernel_choice.Choice("xla-explicit", "XLNet's two-stream relative attention")


class Table(nnx.Module):
  """A learned tensor used as an embedding (decayed like one): XLNet's segment embeddings of
  each layer and its mask embedding."""

  def __init__(self, shape, axes, init, param_dtype, rngs: nnx.Rngs):
    self.embedding = nnx.Param(init(rngs.params(), shape, param_dtype), axes=axes)


class RelativeAttention(nnx.Module):
  """Relative multi-head attention of one layer, applied to either stream."""

  def __init__(self, cfg: BlockConfig, *, rngs: nnx.Rngs):
    if cfg.hidden_size % cfg.num_heads:
      raise ValueError(f"hidden_size {cfg.hidden_size} is not divisible by num_heads "
                       f"{cfg.num_heads}")
    self.cfg = cfg
    n, h = cfg.num_heads, cfg.hidden_size // cfg.num_heads
    init = normal_init(cfg.initializer_range)
    kw = dict(init=init, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
    self.qkv = Dense(cfg.hidden_size, (3, n, h), ("embed", "qkv", "heads", "kv"),
                     use_bias=False, **kw)
    self.r = Dense(cfg.hidden_size, (n, h), ("embed", "heads", "kv"), use_bias=False, **kw)
    self.out = DenseIn((n, h), cfg.hidden_size, ("heads", "kv", "embed"), use_bias=False, **kw)
    param = lambda shape, axes: nnx.Param(init(rngs.params(), shape, cfg.param_dtype),  # noqa: E731
                                          axes=axes)
    self.r_w_bias = param((n, h), ("heads", "kv"))
    self.r_r_bias = param((n, h), ("heads", "kv"))
    self.r_s_bias = param((n, h), ("heads", "kv"))
    self.segment = Table((2, n, h), ("segment", "heads", "kv"), init, cfg.param_dtype, rngs)
    self.norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, dtype=cfg.dtype,
                          param_dtype=cfg.param_dtype)

  def _scores(self, q, k, k_r, rel_index, seg_other, mask):
    """Masked, scaled scores [B, N, Q, K] of queries q [B, Q, N, H] over keys k [B, K, N, H].

    k_r: [P, N, H] the position keys of distances klen .. -qlen + 1; rel_index: [B, Q, K]
    which of them each (query, key) pair is, or None for the content stream (query i is token
    i: Transformer-XL's shift, no gather); seg_other: [B, Q, K] keys in another segment.
    """
    dt = q.dtype
    ac = jnp.einsum("bqnh,bknh->bnqk", q + self.r_w_bias[...].astype(dt), k)
    bd = jnp.einsum("bqnh,pnh->bnqp", q + self.r_r_bias[...].astype(dt), k_r)
    bd = (relative_shift(bd, k.shape[1]) if rel_index is None
          else jnp.take_along_axis(bd, rel_index[:, None], axis=-1))
    seg = self.segment.embedding[...].astype(dt)                  # same / other segment
    ef = jnp.einsum("bqnh,snh->bnqs", q + self.r_s_bias[...].astype(dt), seg)
    ef = jnp.where(seg_other[:, None], ef[..., 1:2], ef[..., 0:1])
    scores = (ac + bd + ef).astype(jnp.float32) * (q.shape[-1] ** -0.5)
    return scores if mask is None else jnp.where(mask[:, None], NEG, scores)

  def _attend(self, x, q, k, v, k_r, rel_index, seg_other, mask, keys):
    kernel_choice.record(_RELATIVE)
    probs = jax.nn.softmax(self._scores(q, k, k_r, rel_index, seg_other, mask), axis=-1)
    probs = dropout(probs.astype(v.dtype), self.cfg.attention_dropout_rate, keys)
    y = jnp.einsum("bnqk,bknh->bqnh", probs, v)
    y = dropout(self.out(y), self.cfg.dropout_rate, keys)
    return constrain(self.norm(x + y), _ACT)

  def __call__(self, h, g, memory, ctx: dict, keys: KeyStream | None):
    """h [B, T, E] (content), g [B, P, E] or None (query stream), memory [B, M, E] or None;
    returns the new (h, g)."""
    context = h if memory is None else jnp.concatenate([memory.astype(h.dtype), h], axis=1)
    w = self.qkv.kernel[...].astype(self.cfg.dtype)
    k = jnp.einsum("bte,enh->btnh", context.astype(self.cfg.dtype), w[:, 1])
    v = jnp.einsum("bte,enh->btnh", context.astype(self.cfg.dtype), w[:, 2])
    q_h = jnp.einsum("bte,enh->btnh", h.astype(self.cfg.dtype), w[:, 0])
    k_r = self.r(ctx["pos_emb"])
    h_out = self._attend(h, q_h, k, v, k_r, ctx["rel_h"], ctx["seg_h"], ctx["mask_h"], keys)
    g_out = None
    if g is not None:
      q_g = jnp.einsum("bpe,enh->bpnh", g.astype(self.cfg.dtype), w[:, 0])
      g_out = self._attend(g, q_g, k, v, k_r, ctx["rel_g"], ctx["seg_g"], ctx["mask_g"], keys)
    return h_out, g_out


class XLNetBlock(nnx.Module):
  """Relative attention, then LN(x + FF(x)), on both streams with the same weights."""

  def __init__(self, cfg: BlockConfig, *, approximate_gelu: bool, rngs: nnx.Rngs):
    self.cfg = cfg
    self.attention = RelativeAttention(cfg, rngs=rngs)
    self.mlp = MLP(cfg, approximate_gelu=approximate_gelu, rngs=rngs)
    self.mlp_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, dtype=cfg.dtype,
                              param_dtype=cfg.param_dtype)

  def _ff(self, x, keys):
    """LN(x + dropout(W2 dropout(act(W1 x)))): XLNet drops out inside the FFN too."""
    rate = self.cfg.dropout_rate
    h = jax.nn.gelu(self.mlp.wi(x), approximate=self.mlp.approximate_gelu)
    h = dropout(constrain(h, ("batch", "length", "mlp")), rate, keys)
    y = dropout(constrain(self.mlp.wo(h), _ACT), rate, keys)
    return constrain(self.mlp_norm(x + y), _ACT)

  def __call__(self, h, g, memory, ctx, key):
    keys = KeyStream(key)
    h, g = self.attention(h, g, memory, ctx, keys)
    return self._ff(h, keys), (None if g is None else self._ff(g, keys))


def relative_shift(scores, klen: int):
  """[B, N, T, klen + T] scores against distances klen .. -T + 1 -> [B, N, T, klen]: row i
  shifted left by T - i, so column j holds distance (klen - T) + i - j (Transformer-XL's
  rel_shift: two reshapes and a slice instead of a gather)."""
  b, n, t, p = scores.shape
  shifted = scores.reshape(b, n, p, t)[:, :, 1:].reshape(b, n, t, p - 1)
  return shifted[..., :klen]


def relative_positions(d_model: int, qlen: int, klen: int, clamp_len: int, dtype):
  """Sinusoidal encodings [klen + qlen, d] of the distances klen, klen - 1, ..., -qlen + 1."""
  inv_freq = 1.0 / (10000 ** (jnp.arange(0, d_model, 2, dtype=jnp.float32) / d_model))
  pos = jnp.arange(klen, -qlen, -1, dtype=jnp.float32)
  if clamp_len > 0:
    pos = jnp.clip(pos, -clamp_len, clamp_len)
  angles = pos[:, None] * inv_freq[None]
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1).astype(dtype)


def positions_from_target_mapping(target_mapping):
  """transformers' one-hot target_mapping [B, P, T] -> target_positions [B, P] (a row of zeros,
  a padding prediction, becomes position 0: predicted, then ignored by its zero weight)."""
  return jnp.argmax(jnp.asarray(target_mapping), axis=-1).astype(jnp.int32)


class XLNetModel(nnx.Module):
  """The XLNet body: word embeddings, the mask embedding of the query stream, the layers."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    init = normal_init(cfg.initializer_range)
    self.word = Embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), init=init,
                      dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype, rngs=rngs)
    self.mask = Table((1, 1, cfg.hidden_size), ("segment", "segment", "embed"), init,
                      cfg.storage_dtype, rngs)
    blocks = [XLNetBlock(cfg.block(), approximate_gelu=cfg.hidden_act == "gelu_new", rngs=rngs)
              for _ in range(cfg.num_layers)]
    self.layers = (layer_stack.stack(blocks) if cfg.scan_layers and len(blocks) > 1
                   else nnx.List(blocks))

  def _context(self, input_ids, segment_ids, attention_mask, perm_mask, target_positions,
               mlen: int) -> dict:
    """What every layer needs: the position encodings and, per stream, masks, relative
    position indices and segment relations."""
    cfg = self.cfg
    b, t = input_ids.shape
    klen = mlen + t
    ctx = {"pos_emb": relative_positions(cfg.hidden_size, t, klen, cfg.clamp_len,
                                         cfg.compute_dtype)}
    # Key j of query i (index i of this segment) is distance mlen + i - j, encoding t - i + j
    # (the content stream's queries are every token in order: relative_shift finds them).
    ctx["rel_h"] = None
    seg = jnp.zeros_like(input_ids) if segment_ids is None else segment_ids
    key_seg = jnp.concatenate([jnp.zeros((b, mlen), seg.dtype), seg], axis=1)
    ctx["seg_h"] = seg[:, :, None] != key_seg[:, None, :]
    # data mask [B, T, klen]: padding keys and the factorisation order; memory is all visible
    blocked = None
    if attention_mask is not None:
      blocked = jnp.broadcast_to(~attention_mask.astype(bool)[:, None, :], (b, t, t))
    if perm_mask is not None:
      perm = perm_mask.astype(bool)
      blocked = perm if blocked is None else blocked | perm
    mask_g = mask_h = None
    if blocked is not None:
      mask_g = jnp.concatenate([jnp.zeros((b, t, mlen), bool), blocked], axis=2)
      # the content stream always sees its own token
      mask_h = mask_g & ~jnp.concatenate([jnp.zeros((t, mlen), bool), jnp.eye(t, dtype=bool)],
                                         axis=1)[None]
    ctx["mask_h"] = mask_h
    if target_positions is not None:
      pos = target_positions.astype(jnp.int32)
      ctx["rel_g"] = t - pos[:, :, None] + jnp.arange(klen)[None, None, :]
      ctx["seg_g"] = jnp.take_along_axis(ctx["seg_h"], pos[:, :, None], axis=1)
      ctx["mask_g"] = (None if mask_g is None
                       else jnp.take_along_axis(mask_g, pos[:, :, None], axis=1))
    return ctx

  def __call__(self, input_ids, segment_ids=None, attention_mask=None, perm_mask=None,
               target_positions=None, mems=None, dropout_rng=None):
    """Returns (output, new_mems): output is the query stream at target_positions [B, P, E]
    when they are given, else the content stream [B, T, E]; new_mems [L, B, M', E] (each
    layer's input over the first reuse_len tokens after the memory, the last mem_len
    positions; no gradient) or None when the model keeps no memory (mem_len = 0).

    perm_mask [B, T, T] (True / 1: i may not attend to j), as transformers takes it;
    mems [L, B, M, E]: the previous segment's new_mems."""
    cfg = self.cfg
    keys = KeyStream(dropout_rng) if dropout_rng is not None else None
    mlen = 0 if mems is None else mems.shape[2]
    ctx = self._context(input_ids, segment_ids, attention_mask, perm_mask, target_positions,
                        mlen)
    ctx["pos_emb"] = dropout(ctx["pos_emb"], cfg.dropout_rate, keys)
    h = dropout(constrain(self.word(input_ids), _ACT), cfg.dropout_rate, keys)
    g = None
    if target_positions is not None:
      g = jnp.broadcast_to(self.mask.embedding[...][0].astype(h.dtype),
                           (*target_positions.shape, cfg.hidden_size))
      g = dropout(g, cfg.dropout_rate, keys)
    layer_keys = [keys.next() if keys is not None else None for _ in range(cfg.num_layers)]
    h, g, inputs = self._layers(h, g, mems, ctx, layer_keys)
    out = dropout(g if g is not None else h, cfg.dropout_rate, keys)
    new_mems = None
    if cfg.mem_len > 0:
      kept = inputs if cfg.reuse_len <= 0 else inputs[:, :, :cfg.reuse_len]
      if mems is not None:
        kept = jnp.concatenate([mems.astype(kept.dtype), kept], axis=2)
      new_mems = jax.lax.stop_gradient(kept[:, :, -cfg.mem_len:])
    return out, new_mems

  def _layers(self, h, g, mems, ctx, layer_keys):
    """Runs the blocks; also returns every block's content input [L, B, T, E] (the memory;
    None when the model keeps none, so fine-tuning does not hold L copies of the activations)."""
    keep = self.cfg.mem_len > 0           # the inputs are the memory: kept only if one is
    if not layer_stack.is_stacked(self.layers):
      inputs = []
      for i, block in enumerate(self.layers):
        if keep:
          inputs.append(h)
        call = nnx.remat(lambda b, *a: b(*a)) if self.cfg.remat else (lambda b, *a: b(*a))
        h, g = call(block, h, g, None if mems is None else mems[i], ctx, layer_keys[i])
      return h, g, (jnp.stack(inputs) if keep else None)
    graphdef, state = nnx.split(self.layers)
    keys = None if layer_keys[0] is None else jnp.stack(layer_keys)

    def body(carry, per_layer):
      h, g = carry
      layer_state, memory, key = per_layer
      new_h, new_g = nnx.merge(graphdef, layer_state)(h, g, memory, ctx, key)
      return (new_h, new_g), (h if keep else None)

    if self.cfg.remat:
      body = jax.checkpoint(body)
    (h, g), inputs = jax.lax.scan(body, (h, g), (state, mems, keys))
    return h, g, inputs


class XLNetLMHeadModel(nnx.Module):
  """XLNet + the LM head tied to the word embeddings (transformers' XLNetLMHeadModel)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.transformer = XLNetModel(cfg, rngs=rngs)
    self.lm_bias = nnx.Param(jnp.zeros((cfg.vocab_size,), cfg.storage_dtype), axes=("vocab",))

  def lm_output(self) -> tuple[jax.Array, jax.Array]:
    return self.transformer.word.embedding[...], self.lm_bias[...]

  def features(self, input_ids, segment_ids, attention_mask, perm_mask, target_positions,
               mems=None, dropout_rng=None):
    """(hidden states at target_positions [B, P, E], new_mems): what the tied head reads."""
    return self.transformer(input_ids, segment_ids, attention_mask, perm_mask,
                            target_positions, mems, dropout_rng)

  def logits(self, hidden):
    table, bias = self.lm_output()
    return (self.transformer.word.attend(hidden)
            + bias.astype(hidden.dtype)).astype(jnp.float32)

  def __call__(self, input_ids, segment_ids, attention_mask, masked_positions,
               dropout_rng=None):
    """Predicts the tokens at masked_positions [B, P] (fill-mask, evaluation): no token sees
    them, each is predicted from the rest of the text. Returns {"mlm_logits": [B, P, V]}."""
    t = input_ids.shape[1]
    hidden_from = jnp.zeros(input_ids.shape, bool).at[
        jnp.arange(input_ids.shape[0])[:, None], masked_positions].set(True)
    perm_mask = jnp.broadcast_to(hidden_from[:, None, :], (input_ids.shape[0], t, t))
    hidden, _ = self.features(input_ids, segment_ids, attention_mask, perm_mask,
                              masked_positions, dropout_rng=dropout_rng)
    return {"mlm_logits": self.logits(hidden)}


class XLNetClassifier(nnx.Module):
  """XLNet + its sequence summary (the last real token: <cls>, with right padding), a tanh
  projection, dropout and the class logits (XLNetForSequenceClassification)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.transformer = XLNetModel(cfg, rngs=rngs)
    self.classifier = SequenceSummary(cfg, rngs=rngs)

  def __call__(self, input_ids, segment_ids, attention_mask, dropout_rng=None):
    keys = KeyStream(dropout_rng) if dropout_rng is not None else None
    h, _ = self.transformer(input_ids, segment_ids, attention_mask,
                            dropout_rng=keys.next() if keys is not None else None)
    last = jnp.maximum(jnp.sum(attention_mask, axis=1).astype(jnp.int32) - 1, 0)
    picked = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]
    return {"logits": self.classifier(picked, keys)}


class SequenceSummary(nnx.Module):
  """summary (E -> E) + tanh + dropout, then the logits (E -> num_labels)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    kw = dict(init=normal_init(cfg.initializer_range), dtype=cfg.compute_dtype,
              param_dtype=cfg.storage_dtype, rngs=rngs)
    self.summary = Dense(cfg.hidden_size, (cfg.hidden_size,), ("embed", "mlp"), **kw)
    self.logits = Dense(cfg.hidden_size, (cfg.num_labels,), ("embed", "classes"), **kw)

  def __call__(self, x, keys):
    x = dropout(jnp.tanh(self.summary(x)), self.cfg.dropout_rate, keys)
    return self.logits(x).astype(jnp.float32)
