"""BERT masking: 15% of non-special tokens, 80/10/10, specials never chosen, reproducible."""

import numpy as np
import pytest

from plm_jax.objectives.masking import (MaskingConfig, example_uniforms, hashed_uniforms,
                                        mask_tokens, max_predictions_for, ngram_cdf,
                                        ngram_length,
                                        rng_uniforms)

VOCAB = 1000
SPECIALS = np.array([0, 1, 2, 3, 4])     # [PAD] [UNK] [CLS] [SEP] [MASK]
MASK_ID = 4


def make_batch(rng, b=4000, t=128):
  """[CLS] tokens [SEP] tokens [SEP] [PAD]... with random lengths."""
  ids = rng.integers(5, VOCAB, (b, t))
  lengths = rng.integers(20, t + 1, b)
  ids[:, 0] = 2
  mid = lengths // 2
  ids[np.arange(b), mid] = 3
  ids[np.arange(b), lengths - 1] = 3
  ids[np.arange(t)[None, :] >= lengths[:, None]] = 0
  special = np.isin(ids, SPECIALS)
  return ids, special


@pytest.fixture(scope="module")
def masked():
  rng = np.random.default_rng(0)
  ids, special = make_batch(rng)
  cfg = MaskingConfig(mask_id=MASK_ID, random_token_ids=np.arange(5, VOCAB),
                      max_predictions=max_predictions_for(128, 0.15))
  # The hashed draws the loader uses, for example indices 0..B-1 of a stream.
  uniforms = example_uniforms(1, 0, np.arange(len(ids)), 128, cfg.max_predictions)
  return ids, special, mask_tokens(ids, special, uniforms, cfg)


def test_fifteen_percent_of_non_special_tokens_are_chosen(masked):
  ids, special, out = masked
  candidates = (~special).sum(1)
  chosen = out["masked_weights"].sum(1)
  np.testing.assert_array_equal(chosen, np.maximum(1, np.rint(candidates * 0.15)))
  assert abs(chosen.sum() / candidates.sum() - 0.15) < 0.005


def test_special_tokens_and_padding_are_never_chosen(masked):
  ids, special, out = masked
  valid = out["masked_weights"] > 0
  rows = np.nonzero(valid)[0]
  positions = out["masked_positions"][valid]
  assert not special[rows, positions].any()
  # Unchosen positions are untouched; the labels are the original ids.
  np.testing.assert_array_equal(out["masked_labels"][valid], ids[rows, positions])
  untouched = np.ones_like(special)
  untouched[rows, positions] = False
  np.testing.assert_array_equal(out["input_ids"][untouched], ids[untouched])


def test_eighty_ten_ten_split_within_sampling_error(masked):
  ids, special, out = masked
  valid = out["masked_weights"] > 0
  rows = np.nonzero(valid)[0]
  new = out["input_ids"][rows, out["masked_positions"][valid]]
  original = out["masked_labels"][valid]
  n = valid.sum()
  is_mask = new == MASK_ID
  is_same = (new == original) & ~is_mask
  is_random = ~is_mask & ~is_same
  # A random draw equal to the original counts as "same"; expected share 0.1 * 1/995.
  for share, expected in ((is_mask.mean(), 0.8), (is_random.mean(), 0.1 * (1 - 1 / 995)),
                          (is_same.mean(), 0.1 + 0.1 / 995)):
    sigma = np.sqrt(expected * (1 - expected) / n)
    assert abs(share - expected) < 4 * sigma, (share, expected, n)
  # Random replacements come from the regular vocabulary, never a special token.
  assert not np.isin(new[is_random], SPECIALS).any()
  assert len(np.unique(new[is_random])) > 900


def test_masking_is_reproducible_and_dynamic():
  rng = np.random.default_rng(0)
  ids, special = make_batch(rng, b=16)
  cfg = MaskingConfig(mask_id=MASK_ID, random_token_ids=np.arange(5, VOCAB), max_predictions=20)
  index = np.arange(16)
  a = mask_tokens(ids, special, example_uniforms(3, 0, index, 128, 20), cfg)
  b = mask_tokens(ids, special, example_uniforms(3, 0, index, 128, 20), cfg)
  # The same sequences served again later in the stream (next epoch) get new masks.
  c = mask_tokens(ids, special, example_uniforms(3, 0, index + 16, 128, 20), cfg)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["masked_positions"], c["masked_positions"])
  # A row's mask depends on its own index only, not on the rest of the batch.
  single = mask_tokens(ids[5:6], special[5:6], example_uniforms(3, 0, index[5:6], 128, 20), cfg)
  for k in a:
    np.testing.assert_array_equal(single[k][0], a[k][5])
  # Any uniform source works, e.g. a numpy Generator.
  d = mask_tokens(ids, special, rng_uniforms(np.random.default_rng(1), 16, 128, 20), cfg)
  assert d["masked_weights"].sum() == a["masked_weights"].sum()


def test_hashed_uniforms_are_uniform_and_independent():
  u = hashed_uniforms(0, 0, np.arange(2000), 256)
  assert 0 <= u.min() and u.max() < 1
  assert abs(u.mean() - 0.5) < 0.002 and abs(u.var() - 1 / 12) < 0.001
  # Neighbouring rows and columns are uncorrelated.
  assert abs(np.corrcoef(u[:-1].ravel(), u[1:].ravel())[0, 1]) < 0.01
  assert abs(np.corrcoef(u[:, :-1].ravel(), u[:, 1:].ravel())[0, 1]) < 0.01
  assert not np.array_equal(hashed_uniforms(1, 0, np.arange(4), 8),
                            hashed_uniforms(0, 0, np.arange(4), 8))


def test_max_predictions_cap():
  assert max_predictions_for(128, 0.15) == 20
  assert max_predictions_for(512, 0.15) == 77


# --- whole words and ALBERT's n-grams -------------------------------------------------------------

def words_batch(rng, b=400, t=128):
  """Rows of words of 1-3 pieces: ids >= 500 are continuations ("##..."), below start a word."""
  ids, special = make_batch(rng, b, t)
  cont = (rng.random((b, t)) < 0.4) & ~special
  ids = np.where(cont, rng.integers(500, VOCAB, (b, t)), np.where(special, ids, ids % 495 + 5))
  starts = np.arange(VOCAB) < 500
  return ids, special, starts


def word_of(ids_row, special_row, starts):
  """Word number of each position (-1 for specials), written out independently."""
  out, w, prev_ok = np.full(len(ids_row), -1), -1, False
  for i, (x, sp) in enumerate(zip(ids_row, special_row)):
    if sp:
      prev_ok = False
      continue
    if starts[x] or not prev_ok:
      w += 1
    out[i], prev_ok = w, True
  return out


@pytest.mark.parametrize("span", ["word", "ngram"])
def test_whole_words_are_chosen_together_and_counts_hold(span):
  rng = np.random.default_rng(5)
  ids, special, starts = words_batch(rng)
  cfg = MaskingConfig(mask_id=MASK_ID, random_token_ids=np.arange(5, VOCAB),
                      max_predictions=max_predictions_for(128, 0.15), span=span,
                      word_starts=starts)
  out = mask_tokens(ids, special, example_uniforms(2, 0, np.arange(len(ids)), 128,
                                                   cfg.max_predictions,
                                                   span_lengths=span == "ngram"), cfg)
  targets = np.rint((~special).sum(1) * 0.15)
  got = out["masked_weights"].sum(1)
  assert (got <= targets).all() and got.mean() > 0.9 * targets.mean()
  for r in range(len(ids)):
    chosen = out["masked_positions"][r][out["masked_weights"][r] == 1]
    assert len(set(chosen.tolist())) == len(chosen) and not special[r][chosen].any()
    words = word_of(ids[r], special[r], starts)
    picked = set(words[chosen].tolist())
    assert set(np.flatnonzero(np.isin(words, list(picked))).tolist()) == set(chosen.tolist())
    np.testing.assert_array_equal(out["masked_labels"][r][:len(chosen)], ids[r][chosen])


def test_ngram_lengths_follow_one_over_n():
  u = np.random.default_rng(0).random(60000)
  n = np.array([ngram_length(x, ngram_cdf(3)) for x in u])
  expected = np.array([1, 1 / 2, 1 / 3]) / (1 + 1 / 2 + 1 / 3)
  np.testing.assert_allclose(np.bincount(n, minlength=4)[1:] / len(n), expected, atol=0.01)
  assert ngram_length(0.999, ngram_cdf(1)) == 1


def test_ngrams_make_longer_runs_than_single_words():
  """Spans of consecutive words: runs of chosen words are longer than whole-word masking's."""
  rng = np.random.default_rng(6)
  ids, special, starts = words_batch(rng, b=600)
  uniforms = example_uniforms(3, 0, np.arange(len(ids)), 128, max_predictions_for(128, 0.15),
                              span_lengths=True)

  def mean_run(span):
    cfg = MaskingConfig(mask_id=MASK_ID, random_token_ids=np.arange(5, VOCAB),
                        max_predictions=max_predictions_for(128, 0.15), span=span,
                        word_starts=starts)
    out = mask_tokens(ids, special, uniforms, cfg)
    runs = []
    for r in range(len(ids)):
      words = sorted(set(word_of(ids[r], special[r], starts)[
          out["masked_positions"][r][out["masked_weights"][r] == 1]].tolist()))
      length = 1
      for a, b in zip(words, words[1:]):
        if b == a + 1:
          length += 1
        else:
          runs.append(length)
          length = 1
      runs.append(length)
    return np.mean(runs)

  assert mean_run("ngram") > mean_run("word") + 0.3
