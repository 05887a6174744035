"""Generation with the key/value cache, sampling filters, fill-mask, decode benchmark."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from plm_jax import families, models
from plm_jax.models.generate import (BeamConfig, SamplingConfig, beam_loop, beam_search, filter_logits,
                             generate, greedy, length_penalty, penalize)


def tiny_gpt(scan_layers: bool = True):
  cfg = models.ModelConfig(family="gpt", vocab_size=97, hidden_size=32, num_layers=2,
                           num_heads=4, mlp_dim=64, max_position=96, dropout_rate=0.0,
                           layer_norm_eps=1e-5, scan_layers=scan_layers)
  return families.build(cfg, nnx.Rngs(0))


@pytest.fixture(scope="module")
def gpt():
  return tiny_gpt()


def test_stacked_and_unrolled_layers_generate_the_same_tokens():
  """The stacked cache ([L, B, S, N, H], written in place) and the per-layer one agree."""
  prompts = [[5, 6, 7, 8], [9, 10]]
  a = generate(tiny_gpt(True), prompts, SamplingConfig(max_new_tokens=12))
  b = generate(tiny_gpt(False), prompts, SamplingConfig(max_new_tokens=12))
  assert a == b


def test_cached_greedy_equals_recomputing_the_prefix(gpt):
  rng = np.random.default_rng(0)
  prompts = [list(rng.integers(1, 97, n)) for n in (5, 17, 3)]   # left-padded into one bucket
  cached = generate(gpt, prompts, SamplingConfig(max_new_tokens=24))
  uncached = generate(gpt, prompts, SamplingConfig(max_new_tokens=24), use_cache=False)
  for prompt, a, b in zip(prompts, cached, uncached):
    reference = greedy(gpt, np.array([prompt]), 24)[0, len(prompt):].tolist()
    assert a == reference and b == reference


def test_sampling_is_reproducible_from_the_seed(gpt):
  prompts = [[1, 2, 3], [4, 5]]
  def run(seed):
    return generate(gpt, prompts, SamplingConfig(max_new_tokens=12, temperature=1.0, top_k=20,
                                                 top_p=0.9, seed=seed))
  assert run(3) == run(3)
  assert run(3) != run(4)


def test_eos_stops_a_row(gpt):
  prompt = [7, 30, 55, 2]
  sampling = dict(max_new_tokens=16, temperature=1.0, seed=5)   # diverse, and reproducible
  first = generate(gpt, [prompt], SamplingConfig(**sampling))[0]
  cut = next(i for i in range(1, 16) if first[i] not in first[:i])
  out = generate(gpt, [prompt], SamplingConfig(**sampling, eos_id=first[cut]))[0]
  assert out == first[:cut + 1]


def hf_processors(penalty: float, ngram: int):
  """transformers' own logits processors for the same settings (in generate's order)."""
  transformers = pytest.importorskip("transformers")
  out = []
  if penalty != 1.0:
    out.append(transformers.RepetitionPenaltyLogitsProcessor(penalty))
  if ngram > 0:
    out.append(transformers.NoRepeatNGramLogitsProcessor(ngram))
  return out


def hf_penalized(logits, sequence, processors):
  torch = pytest.importorskip("torch")
  scores = torch.tensor(np.asarray(logits, np.float32)[None])
  ids = torch.tensor([sequence], dtype=torch.long)
  for processor in processors:
    scores = processor(ids, scores)
  return scores[0].numpy()


@pytest.mark.parametrize("penalty, ngram", [(1.3, 0), (0.7, 0), (1.0, 1), (1.0, 2), (1.0, 3),
                                            (1.5, 2), (1.2, 4)])
def test_penalties_equal_transformers_on_the_same_logits(penalty, ngram):
  """Left-padded rows of several lengths, tokens from a few ids (so n-grams repeat), logits of
  both signs: the same logits out as transformers' processors on each row's sequence."""
  rng = np.random.default_rng(ngram * 10 + int(penalty * 10))
  vocab, width = 40, 24
  lengths = [1, 2, 5, 13, 24, 3]
  buffer = np.zeros((len(lengths), width + 1), np.int32)
  seen = np.zeros(buffer.shape, bool)
  for r, n in enumerate(lengths):
    buffer[r, width - n:width] = rng.integers(0, 6 if r % 2 else vocab, n)
    seen[r, width - n:width] = True
  logits = rng.normal(0, 3, (len(lengths), vocab)).astype(np.float32)
  got = np.asarray(penalize(jnp.asarray(logits), jnp.asarray(buffer), jnp.asarray(seen), width,
                            penalty, ngram))
  processors = hf_processors(penalty, ngram)
  for r, n in enumerate(lengths):
    want = hf_penalized(logits[r], buffer[r, width - n:width].tolist(), processors)
    # the same tokens banned; the penalised values within XLA's division (an ulp of torch's)
    np.testing.assert_array_equal(np.isinf(got[r]), np.isinf(want), err_msg=f"row {r}")
    np.testing.assert_allclose(got[r], want, rtol=2e-7, atol=0, err_msg=f"row {r}: {n} tokens")
  changed = (got != logits).sum()
  assert changed > 0                                    # the settings did something here


def test_generate_with_penalties_is_transformers_greedy(gpt):
  """Cached decoding of left-padded prompts with both settings gives, token for token, greedy
  decoding by recomputing the prefix with transformers' processors applied to its logits; no
  generated token then completes a bigram the sequence held before."""
  torch = pytest.importorskip("torch")
  prompts = [[5, 6, 5, 6, 7], [9, 10], [3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 8]]
  cfg = SamplingConfig(max_new_tokens=20, repetition_penalty=1.3, no_repeat_ngram_size=2)
  got = generate(gpt, prompts, cfg)
  plain = generate(gpt, prompts, SamplingConfig(max_new_tokens=20))
  processors = hf_processors(1.3, 2)
  width = 48                  # causal: the logits at a position ignore the zeros after it
  forward = jax.jit(lambda ids: gpt(ids)["logits"])
  for prompt, row in zip(prompts, got):
    sequence = list(prompt)
    for _ in range(20):
      ids = jnp.asarray([sequence + [0] * (width - len(sequence))])
      logits = np.asarray(forward(ids)[0, len(sequence) - 1], np.float32)
      sequence.append(int(torch.argmax(torch.tensor(hf_penalized(logits, sequence,
                                                                 processors)))))
    assert row == sequence[len(prompt):]
    for i in range(len(prompt), len(sequence)):     # no generated token repeats a bigram
      assert (sequence[i - 1], sequence[i]) not in set(zip(sequence[:i - 1], sequence[1:i]))
  assert got != plain                       # the untrained model repeats itself without them


def test_top_k_and_top_p_filters():
  logits = jnp.log(jnp.array([[0.5, 0.25, 0.15, 0.1]]))
  k2 = np.asarray(filter_logits(logits, 2, 1.0))
  assert np.isfinite(k2[0, :2]).all() and (k2[0, 2:] < -1e30).all()
  p = np.asarray(filter_logits(logits, 0, 0.7))   # 0.5 + 0.25 reach 0.7: keep two
  assert (p[0, :2] > -1e30).all() and (p[0, 2:] < -1e30).all()
  tiny = np.asarray(filter_logits(logits, 0, 0.01))  # the best token always stays
  assert tiny[0, 0] > -1e30 and (tiny[0, 1:] < -1e30).all()


def test_prompt_too_long_is_an_error(gpt):
  with pytest.raises(ValueError, match="exceeds the model's 96 positions"):
    generate(gpt, [[1] * 90], SamplingConfig(max_new_tokens=10))


# --- beam search ----------------------------------------------------------------------------------

def test_beam_of_one_is_greedy(gpt):
  """Beam size 1 without a length penalty keeps the single best token at every step: greedy,
  stopping at the same end-of-text token."""
  prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
  plain = generate(gpt, prompts, SamplingConfig(max_new_tokens=10))
  eos = plain[0][3]                      # a token greedy decoding meets: rows stop there
  greedy_rows = generate(gpt, prompts, SamplingConfig(max_new_tokens=10, eos_id=eos))
  beam_rows = beam_search(gpt, prompts, BeamConfig(beam_size=1, max_new_tokens=10,
                                                   length_penalty=0.0, eos_id=eos))
  assert beam_rows == greedy_rows and greedy_rows[0][-1] == eos


def test_beam_search_with_no_repeated_ngrams(gpt):
  """A beam of one bans the n-grams greedy decoding bans; a wider beam repeats no bigram."""
  prompts = [[5, 6, 5, 6, 7], [9, 10]]
  greedy_rows = generate(gpt, prompts, SamplingConfig(max_new_tokens=16, no_repeat_ngram_size=2))
  beam = dict(max_new_tokens=16, length_penalty=0.0, no_repeat_ngram_size=2)
  assert beam_search(gpt, prompts, BeamConfig(beam_size=1, **beam)) == greedy_rows
  assert beam_search(gpt, prompts, BeamConfig(beam_size=1, **{**beam, "no_repeat_ngram_size": 0})
                     ) != greedy_rows
  for prompt, row in zip(prompts, beam_search(gpt, prompts, BeamConfig(beam_size=3, **beam))):
    sequence = prompt + row
    for i in range(len(prompt), len(sequence)):
      assert (sequence[i - 1], sequence[i]) not in set(zip(sequence[:i - 1], sequence[1:i]))


def test_beam_search_scores_at_least_greedy(gpt):
  """With no end-of-text token every hypothesis has the same length: beam search's output
  has at least greedy's log-probability under the model."""
  import jax
  prompt = [3, 14, 15, 92, 65]
  greedy_out = generate(gpt, [prompt], SamplingConfig(max_new_tokens=6))[0]
  beam_out = beam_search(gpt, [prompt], BeamConfig(beam_size=4, max_new_tokens=6,
                                                   length_penalty=0.0))[0]

  def logprob(out):
    ids = np.array([prompt + out])
    logp = jax.nn.log_softmax(gpt(ids)["logits"][0], -1)
    return float(sum(logp[len(prompt) - 1 + i, t] for i, t in enumerate(out)))
  assert len(beam_out) == 6 and logprob(beam_out) >= logprob(greedy_out) - 1e-5


def table_scorer(table, batch, k):
  """A scorer whose next-token distribution depends on the last token only (a Markov table);
  the prompt's last token is 0."""
  logp = np.log(np.asarray(table, np.float64) + 1e-12)
  last = np.zeros(batch * k, np.int64)

  def scorer(parents, tokens):
    nonlocal last
    if parents is not None:
      last = np.asarray(tokens)
    rows = logp[last].reshape(batch, k, -1)
    return rows, np.broadcast_to(np.arange(rows.shape[-1]), rows.shape)
  return scorer


def test_beam_finds_the_sequence_greedy_misses():
  """Tokens: 0 start, 1 eos, 2 A, 3 B, 4 C. Greedy takes A (0.6), then C (0.5), then eos:
  p("A C <eos>") = 0.3, while p("B <eos>") = 0.4 x 0.95 = 0.38, which a beam of 2 finds."""
  table = [[0, 0, 0.6, 0.4, 0],          # after the prompt
           [0, 1, 0, 0, 0],              # after eos (unused)
           [0, 0.1, 0, 0, 0.5],          # after A: C 0.5, eos 0.1 (the rest nowhere)
           [0, 0.95, 0, 0, 0.05],        # after B: eos
           [0, 1, 0, 0, 0]]              # after C: eos
  cfg = dict(max_new_tokens=5, length_penalty=0.0, eos_id=1)
  greedy_out = beam_loop(table_scorer(table, 1, 1), 1, BeamConfig(beam_size=1, **cfg))
  beam_out = beam_loop(table_scorer(table, 1, 2), 1, BeamConfig(beam_size=2, **cfg))
  assert greedy_out == [[2, 4, 1]] and beam_out == [[3, 1]]
  # two prompts at once: the same answer for each
  assert beam_loop(table_scorer(table, 2, 2), 2, BeamConfig(beam_size=2, **cfg)) == [[3, 1]] * 2


def test_length_penalty_favours_longer_hypotheses():
  """p("<eos>") = 0.5 beats p("A <eos>") = 0.5 x 0.9 = 0.45 without a penalty; with Wu et al.'s
  alpha = 2, log p / ((5 + n) / 6)^2 gives -0.69 against -0.80 / 1.36 = -0.59: the longer."""
  table = [[0, 0.5, 0.5], [0, 1, 0], [0, 0.9, 0.1]]
  cfg = dict(beam_size=2, max_new_tokens=4, eos_id=1)
  short = beam_loop(table_scorer(table, 1, 2), 1, BeamConfig(length_penalty=0.0, **cfg))
  long = beam_loop(table_scorer(table, 1, 2), 1, BeamConfig(length_penalty=2.0, **cfg))
  assert short == [[1]] and long == [[2, 1]]
  assert length_penalty(1, 0.6) == pytest.approx(1.0) and length_penalty(7, 1.0) == 2.0
