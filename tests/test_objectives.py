"""Loss math against hand computations; exactness of sums/counts under accumulation."""

import jax.numpy as jnp
import numpy as np
import pytest

from plm_jax.objectives import CausalLM, MaskedLMWithNSP, MaskedLMWithSOP
from plm_jax.objectives.losses import classification_stats


def log_softmax(x):
  x = np.asarray(x, np.float64)
  return x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(
      -1, keepdims=True)


def test_cross_entropy_by_hand():
  logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [1.0, 1.0, 1.0]])
  labels = np.array([0, 1, 2])
  weights = np.array([1.0, 1.0, 0.0])
  stats = classification_stats(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weights))
  lp = log_softmax(logits)
  expected = -(lp[0, 0] + lp[1, 1])           # the zero-weight row does not count
  np.testing.assert_allclose(float(stats["loss_sum"]), expected, rtol=1e-6)
  assert float(stats["count"]) == 2.0
  assert float(stats["correct"]) == 1.0        # row 0 right, row 1 wrong


class FakeBert:
  """Its decoder is the identity (table = I, bias 0): the features are the MLM logits."""

  def __init__(self, mlm, nsp):
    self.mlm, self.nsp = mlm, nsp

  def features(self, input_ids, segment_ids, attention_mask, masked_positions,
               dropout_rng=None):
    return {"mlm_features": jnp.asarray(self.mlm, jnp.float32),
            "pair_logits": jnp.asarray(self.nsp)}

  def lm_output(self):
    v = self.mlm.shape[-1]
    return jnp.eye(v), jnp.zeros((v,))


def test_bert_loss_is_mean_mlm_over_chosen_plus_nsp():
  rng = np.random.default_rng(0)
  mlm = rng.normal(size=(2, 3, 7))
  nsp = rng.normal(size=(2, 2))
  batch = {"input_ids": np.zeros((2, 8), np.int32), "segment_ids": np.zeros((2, 8), np.int32),
           "attention_mask": np.ones((2, 8), np.int32),
           "masked_positions": np.zeros((2, 3), np.int32),
           "masked_labels": np.array([[1, 2, 0], [3, 0, 0]]),
           "masked_weights": np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]], np.float32),
           "nsp_labels": np.array([0, 1])}
  objective = MaskedLMWithNSP()
  stats = objective.stats(FakeBert(mlm, nsp), batch)
  loss = float(objective.loss(stats, objective.totals(batch)))
  lp, lq = log_softmax(mlm), log_softmax(nsp)
  mlm_loss = -(lp[0, 0, 1] + lp[0, 1, 2] + lp[1, 0, 3]) / 3
  nsp_loss = -(lq[0, 0] + lq[1, 1]) / 2
  np.testing.assert_allclose(loss, mlm_loss + nsp_loss, rtol=1e-5)
  metrics = objective.metrics(stats)
  np.testing.assert_allclose(float(metrics["mlm_loss"]), mlm_loss, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["nsp_loss"]), nsp_loss, rtol=1e-5)


def test_albert_loss_adds_sentence_order_and_its_accuracy():
  rng = np.random.default_rng(3)
  mlm, sop = rng.normal(size=(3, 2, 5)), np.array([[2.0, 0.0], [0.0, 1.0], [3.0, -1.0]])
  batch = {"input_ids": np.zeros((3, 8), np.int32), "segment_ids": np.zeros((3, 8), np.int32),
           "attention_mask": np.ones((3, 8), np.int32),
           "masked_positions": np.zeros((3, 2), np.int32),
           "masked_labels": np.array([[1, 2], [3, 4], [0, 0]]),
           "masked_weights": np.array([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]], np.float32),
           "sop_labels": np.array([0, 1, 1])}
  objective = MaskedLMWithSOP()
  stats = objective.stats(FakeBert(mlm, sop), batch)
  metrics = objective.metrics(stats)
  lq = log_softmax(sop)
  sop_loss = -(lq[0, 0] + lq[1, 1] + lq[2, 1]) / 3
  np.testing.assert_allclose(float(metrics["sop_loss"]), sop_loss, rtol=1e-5)
  assert float(metrics["sop_accuracy"]) == pytest.approx(2 / 3)   # rows 0 and 1 right, 2 wrong
  assert "nsp_accuracy" not in metrics
  lp = log_softmax(mlm)
  mlm_loss = -(lp[0, 0, 1] + lp[0, 1, 2] + lp[1, 0, 3]) / 3
  np.testing.assert_allclose(float(objective.loss(stats, objective.totals(batch))),
                             mlm_loss + sop_loss, rtol=1e-5)


class FakeGPT:
  """Its LM head is the identity: the final hidden states are the logits."""

  def __init__(self, logits):
    self.logits = logits

  def hidden_states(self, input_ids, attention_mask=None, segment_ids=None, positions=None,
                    dropout_rng=None):
    return jnp.asarray(self.logits, jnp.float32)

  def lm_output(self):
    return jnp.eye(self.logits.shape[-1]), None


def test_causal_lm_loss_ignores_padding_and_perplexity_is_exp():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 4, 5))
  labels = rng.integers(0, 5, (2, 4))
  weights = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], np.float32)
  batch = {"input_ids": labels, "attention_mask": weights.astype(np.int32), "labels": labels,
           "label_weights": weights}
  objective = CausalLM()
  stats = objective.stats(FakeGPT(logits), batch)
  lp = log_softmax(logits)
  picked = np.take_along_axis(lp, labels[..., None], -1)[..., 0]
  expected = -(picked * weights).sum() / weights.sum()
  metrics = objective.metrics(stats)
  np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["perplexity"]), np.exp(expected), rtol=1e-5)


def test_micro_batch_sums_equal_whole_batch():
  """Why stats are sums: split a batch, add the statistics, get the whole batch's loss."""
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(4, 6, 9))
  labels = rng.integers(0, 9, (4, 6))
  weights = (rng.random((4, 6)) < 0.4).astype(np.float32)
  whole = classification_stats(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weights))
  parts = [classification_stats(jnp.asarray(logits[i::2]), jnp.asarray(labels[i::2]),
                                jnp.asarray(weights[i::2])) for i in range(2)]
  for k in whole:
    np.testing.assert_allclose(float(whole[k]), float(parts[0][k] + parts[1][k]), rtol=1e-5)
