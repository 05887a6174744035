"""Which kernel each attention call runs: the table of plm_jax/models/kernel_choice.py, and the
choice recorded while tracing every builder's and objective's step with cuDNN asked for (the
cuDNN call itself replaced by XLA's, as there is no GPU here): packed rows never reach cuDNN,
padding and causal rows always do."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from helpers import family_config
from plm_jax import families, objectives
from plm_jax.data import loader
from plm_jax.models import kernel_choice, layers
from plm_jax.families import model_config
from plm_jax.models.config import padded_vocab
from plm_jax.models.kernel_choice import AttentionCall, choose


def call(**kw):
  base = dict(length=128, head_dim=64, dtype="bfloat16", causal=False, padding=False,
              segments=False, dropout=False)
  return AttentionCall(**{**base, **kw})


@pytest.mark.parametrize("kw, hopper, kernel, why", [
    (dict(), False, "cudnn", "no mask"),
    (dict(causal=True, padding=True), False, "cudnn", "causal, padding"),
    (dict(length=127, causal=True), False, "cudnn", "causal"),        # odd T: no bias, fine
    (dict(dtype="float32"), False, "xla", "16-bit"),
    (dict(head_dim=100), False, "xla", "multiples of 8"),
    (dict(head_dim=192), False, "xla", "up to 128"),
    (dict(head_dim=192), True, "cudnn", "no mask"),                   # sm_90+: up to 256
    (dict(head_dim=264), True, "xla", "up to 256"),
    (dict(segments=True, causal=True), False, "xla", "packed rows"),
    (dict(dropout=True), False, "xla-explicit", "dropout"),
])
def test_cudnn_takes_only_what_it_can_train(kw, hopper, kernel, why):
  c = choose("cudnn", call(**kw), hopper)
  assert c.kernel == kernel and why in c.why


def test_splash_takes_its_tiles_and_any_mask_xla_takes_everything():
  assert choose("splash", call(segments=True, padding=True)).kernel == "splash"
  assert choose("splash", call(length=192)).kernel == "xla"
  assert choose("splash", call(length=192)).why.startswith("splash needs T a multiple of 128")
  assert choose("xla", call(segments=True, dtype="float32")).kernel == "xla"
  assert choose("splash", call(dropout=True)).kernel == "xla-explicit"


# (family, builder, what each attention call must run when cuDNN is asked for)
CASES = [
    ("bert", "nsp", "cudnn (padding)"),
    ("bert", "full_sentences", "cudnn (padding)"),
    ("roberta", "full_sentences", "cudnn (padding)"),
    ("albert", "sop", "cudnn (padding)"),
    ("gpt", "blocks", "cudnn (causal)"),              # whole blocks: no padding
    ("gpt", "packed", "xla (packed rows"),
    ("xlnet", "plm", "xla-explicit (XLNet's two-stream relative attention)"),
]


def traced_choices(config, monkeypatch) -> str:
  """The attention choices of one training step's forward pass, traced (not run) on CPU with
  cuDNN asked for and bfloat16 compute."""
  config.model.attention_impl = "cudnn"
  config.model.dtype = "bfloat16"
  config.model.attention_dropout_rate = 0.0
  monkeypatch.setattr(layers, "cudnn_attention", lambda q, k, v, causal, lengths:
                      jax.nn.dot_product_attention(q, k, v, is_causal=causal))
  vocab = padded_vocab(config, config.data.vocab_size)
  mcfg = model_config(config, vocab)
  assert mcfg.attention_impl == "cudnn"
  batch = {k: jnp.asarray(v) for k, v in loader.synthetic_batch(config, vocab).items()}
  objective = objectives.for_config(config)
  with kernel_choice.recording() as log:
    jax.eval_shape(lambda: objective.stats(families.build(mcfg, nnx.Rngs(0)), batch,
                                           dropout_rng=jax.random.key(1)))
  return kernel_choice.summary(log)


@pytest.mark.parametrize("family, builder, expected", CASES,
                         ids=[f"{f}-{b}" for f, b, _ in CASES])
def test_every_builder_gets_the_kernel_the_table_gives(family, builder, expected, monkeypatch):
  objective = {"nsp": "mlm_nsp", "sop": "mlm_sop", "full_sentences": "mlm", "blocks": "causal_lm",
               "packed": "causal_lm", "plm": "plm"}[builder]
  config = family_config(family, **{"data.builder": builder, "objective.name": objective,
                                    "data.max_seq_length": 64})
  choices = traced_choices(config, monkeypatch)
  assert choices.startswith(expected), choices
  assert "cudnn" not in choices or "segments" not in choices


def test_attention_dropout_in_training_takes_the_explicit_path(monkeypatch):
  config = family_config("bert")
  choices = traced_choices(config, monkeypatch)
  assert choices == "cudnn (padding)"
  config = family_config("bert")
  config.model.attention_impl = "cudnn"
  config.model.dtype = "bfloat16"
  config.model.attention_dropout_rate = 0.1
  vocab = padded_vocab(config, config.data.vocab_size)
  batch = {k: jnp.asarray(v) for k, v in loader.synthetic_batch(config, vocab).items()}
  with kernel_choice.recording() as log:
    jax.eval_shape(lambda: objectives.for_config(config).stats(
        families.build(model_config(config, vocab), nnx.Rngs(0)), batch,
        dropout_rng=jax.random.key(1)))
  assert kernel_choice.summary(log) == "xla-explicit (attention dropout: no fused kernel has it)"
