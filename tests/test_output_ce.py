"""The chunked output-layer cross-entropy: equal to the plain form, and no [B, T, V] float32
tensor in the compiled train step."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import family_config
from plm_jax import parallel
from plm_jax.models.config import padded_vocab
from plm_jax.objectives.losses import classification_stats
from plm_jax.objectives.output_ce import chunk_length, output_stats
from plm_jax.trainer import Trainer

B, T, D, V = 4, 12, 16, 50


def inputs(bias: bool):
  k = jax.random.split(jax.random.key(0), 5)
  h = jax.random.normal(k[0], (B, T, D))
  table = jax.random.normal(k[1], (V, D)) * 0.3
  b = jax.random.normal(k[2], (V,)) if bias else None
  labels = jax.random.randint(k[3], (B, T), 0, V)
  weights = (jax.random.uniform(k[4], (B, T)) > 0.3).astype(jnp.float32)
  return h, table, b, labels, weights


def plain(h, table, bias, labels, weights):
  logits = jnp.einsum("btd,vd->btv", h, table) + (0 if bias is None else bias)
  return classification_stats(logits, labels, weights)


def test_chunk_length_divides_the_sequence():
  assert chunk_length(4, 12, 16) == 4         # 4 rows x 4 positions = 16 tokens
  assert chunk_length(4, 12, 20) == 4         # 5 does not divide 12
  assert chunk_length(4, 12, 3) == 1          # at least one position
  assert chunk_length(4, 12, 0) == 12         # off: one chunk


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("chunk", [4, 16, 24, 0])
def test_equals_the_plain_form_with_gradients(bias, chunk):
  h, table, b, labels, weights = inputs(bias)
  args = (h, table) + ((b,) if bias else ())

  def loss(f, *a):
    stats = f(a[0], a[1], a[2] if bias else None, labels, weights)
    return stats["loss_sum"], stats

  chunked = lambda h, t, b, y, w: output_stats(h, t, b, y, w, chunk_tokens=chunk)  # noqa: E731
  argnums = tuple(range(len(args)))
  (la, sa), ga = jax.value_and_grad(lambda *a: loss(plain, *a), argnums, has_aux=True)(*args)
  (lb, sb), gb = jax.value_and_grad(lambda *a: loss(chunked, *a), argnums, has_aux=True)(*args)
  np.testing.assert_allclose(float(lb), float(la), rtol=1e-6)
  assert float(sb["correct"]) == float(sa["correct"]) and float(sb["count"]) == float(sa["count"])
  for x, y in zip(ga, gb):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-6)


def test_bfloat16_logits_stay_close_to_float32():
  h, table, b, labels, weights = inputs(True)
  exact = float(plain(h, table, b, labels, weights)["loss_sum"])
  low = float(output_stats(h.astype(jnp.bfloat16), table, b, labels, weights,
                           chunk_tokens=16)["loss_sum"])
  assert abs(low - exact) / exact < 2e-2


def _train_step_hlo(loss_chunk: int) -> tuple[str, tuple]:
  config = family_config("gpt", **{"mesh.fsdp": 1, "mesh.data": 1, "train.batch_size": 8,
                                   "objective.loss_chunk": loss_chunk})
  mesh = parallel.mesh_for(config, jax.devices()[:1])
  vocab = padded_vocab(config, config.data.vocab_size)
  trainer = Trainer.create(config, mesh, vocab)
  return trainer.compile_train_step().as_text(), (8, config.data.max_seq_length, vocab)


def test_compiled_step_holds_no_float32_logits():
  """The plain form (loss_chunk=0) has f32[B, T, V] buffers; the chunked one none at all."""
  full, (b, t, v) = _train_step_hlo(0)
  chunked, _ = _train_step_hlo(128)
  pattern = rf"f32\[{b},{t},{v}\]"
  assert re.search(pattern, full)
  assert not re.search(pattern, chunked)
  chunks = [int(r) * int(c) for r, c in re.findall(rf"f32\[(\d+),(\d+),{v}\]", chunked)]
  assert all(tokens < b * t for tokens in chunks)       # only chunk-sized logits, if any
