"""The family registry: everything that makes BERT, RoBERTa, ALBERT, XLNet or GPT what it is,
in one entry each. The rest of plm-jax asks the registry instead of comparing family names.

Adding a family is one `Family` entry here, one model file in plm_jax/models/ and its Hugging
Face table in plm_jax/hf/tables.py. An entry names:
- the pretraining model and the heads built on the same body (sequence classifier, token
  tagger, span model for question answering);
- the objectives it pretrains with (the first is its default) and so the example builders
  that fit it (plm_jax/data/pipeline.py keys builders by objective);
- the tokenizer a run trains on its corpus when none is given;
- whether it is a decoder (causal: generate) or an encoder (bidirectional: fill-mask);
- how a sentence pair is laid out for fine-tuning;
- its Hugging Face tensor table and config mapping;
- its model-FLOPs formula (MFU in bench and plan);
- where its embeddings and body live, for layer-wise learning-rate decay.
"""

import dataclasses
from typing import Callable

from flax import nnx

from plm_jax import objectives
from plm_jax.hardware import accelerator, flops
from plm_jax.errors import ConfigError
from plm_jax.hf import tables as hf_tables
from plm_jax.models.bert import BertForPreTraining
from plm_jax.models.classifier import HEAD_PARAMS, EncoderClassifier, GPTClassifier
from plm_jax.models.config import ModelConfig
from plm_jax.models.gpt import GPTLMHeadModel
from plm_jax.models.span_head import EncoderSpanModel, XLNetSpanModel
from plm_jax.models.tagger import EncoderTagger, GPTTagger, XLNetTagger
from plm_jax.models.xlnet import XLNetClassifier, XLNetLMHeadModel


@dataclasses.dataclass(frozen=True)
class PairLayout:
  """The special tokens (by tokenizer role) around texts a and b of a classification example,
  as the pretrained model saw them, and the segment id of b."""
  prefix: tuple[str, ...]
  middle: tuple[str, ...]            # between a and b (pairs only)
  suffix: tuple[str, ...]
  b_segment: int
  last_segment: int | None = None    # the segment id of the suffix's last token, if its own
                                     # (XLNet's <cls>: 2)


@dataclasses.dataclass(frozen=True)
class Family:
  name: str
  model: type                        # the pretraining nnx.Module, built from a ModelConfig
  classifier: type                   # the sequence classifier on the same body
  objectives: tuple[str, ...]        # pretraining objectives; the first is the default
  tokenizer_kind: str                # trained on the corpus: wordpiece, bpe or roberta-bpe
  decoder: bool                      # causal decoder (generate) or encoder (fill-mask)
  pair_layout: PairLayout
  hf: hf_tables.HFSpec
  flops_per_token: Callable[..., float]
  embeddings: tuple[str, ...]        # top-level parameter names of the embeddings (depth 0)
  body_root: tuple[str, ...] = ()    # the body's parameters live under this path
  tagger: type | None = None         # the token classifier on the same body
  span_model: type | None = None     # extractive question answering (start / end logits) on
                                     # the same body; None: not a QA family (no bidirectional
                                     # context of the question for every token)

  def build(self, cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
    """The pretraining model, or the classifier when cfg.num_labels > 0 (the tagger with
    cfg.token_labels), or the span model when cfg.span_head."""
    if cfg.span_head:
      if self.span_model is None:
        raise ConfigError(f"{self.name} has no question-answering head; extractive question "
                          f"answering fine-tunes {', '.join(span_families())}")
      return self.span_model(cfg, rngs=rngs)
    if cfg.num_labels and cfg.token_labels:
      return self.tagger(cfg, rngs=rngs)
    return (self.classifier if cfg.num_labels else self.model)(cfg, rngs=rngs)

  def layer_depth(self, path: tuple[str, ...], num_layers: int, shared_layers: bool
                  ) -> int | tuple[int, ...] | None:
    """0 for embeddings, l + 1 for layer l, num_layers + 1 above the layers (pooler, final
    LayerNorm); None for a classification head; for the layers stacked along a leading axis
    (model.scan_layers), the depths of its slices, (1, ..., num_layers)."""
    if path[0] in HEAD_PARAMS:
      return None
    if path[:len(self.body_root)] == self.body_root:
      path = path[len(self.body_root):]
    if path[0] == "layers":
      # ALBERT's one shared layer is every layer: it gets the top layer's rate.
      if shared_layers:
        return num_layers
      return int(path[1]) + 1 if path[1].isdigit() else tuple(range(1, num_layers + 1))
    if path[0] in self.embeddings:
      return 0
    return num_layers + 1


_CLS_A_SEP_B_SEP = PairLayout(("cls",), ("sep",), ("sep",), 1)
_ENCODER = dict(model=BertForPreTraining, classifier=EncoderClassifier, tagger=EncoderTagger,
                decoder=False,
                flops_per_token=flops.encoder_flops_per_token,
                embeddings=("embeddings", "projection"), body_root=("encoder",),
                span_model=EncoderSpanModel)

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("bert", objectives=("mlm_nsp", "mlm", "mlm_sop"), tokenizer_kind="wordpiece",
           pair_layout=_CLS_A_SEP_B_SEP, hf=hf_tables.BERT, **_ENCODER),
    # <s> a </s></s> b </s>, one segment type
    Family("roberta", objectives=("mlm",), tokenizer_kind="roberta-bpe",
           pair_layout=PairLayout(("cls",), ("sep", "sep"), ("sep",), 0), hf=hf_tables.ROBERTA,
           **_ENCODER),
    # one layer shared by every depth: its FLOPs counted at each
    Family("albert", objectives=("mlm_sop", "mlm", "mlm_nsp"), tokenizer_kind="wordpiece",
           pair_layout=_CLS_A_SEP_B_SEP, hf=hf_tables.ALBERT,
           **{**_ENCODER, "flops_per_token": flops.shared_layer_encoder_flops_per_token}),
    # a <eos> b <eos>: the classifier reads the last token
    Family("gpt", model=GPTLMHeadModel, classifier=GPTClassifier, objectives=("causal_lm",),
           tokenizer_kind="bpe", decoder=True, pair_layout=PairLayout((), ("eos",), ("eos",), 0),
           hf=hf_tables.GPT2, flops_per_token=flops.decoder_flops_per_token,
           embeddings=("wte", "wpe"), tagger=GPTTagger),
    # a <sep> b <sep> <cls>: <cls> (segment 2) ends the text, and the classifier reads it
    Family("xlnet", model=XLNetLMHeadModel, classifier=XLNetClassifier, objectives=("plm",),
           tokenizer_kind="unigram", decoder=False,
           pair_layout=PairLayout((), ("sep",), ("sep", "cls"), 1, last_segment=2),
           hf=hf_tables.XLNET, flops_per_token=flops.xlnet_flops_per_token,
           embeddings=("word", "mask"), body_root=("transformer",), tagger=XLNetTagger,
           span_model=XLNetSpanModel),
)}


def get(name: str) -> Family:
  if name not in FAMILIES:
    raise ConfigError(f"model.family={name!r} is not one of {', '.join(FAMILIES)}")
  return FAMILIES[name]


def build(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
  """The model of `cfg` (its family's pretraining model, or classifier when num_labels > 0)."""
  return get(cfg.family).build(cfg, rngs)


def span_families() -> list[str]:
  """The families extractive question answering fine-tunes (those with a span model)."""
  return [f.name for f in FAMILIES.values() if f.span_model is not None]


def by_hf_model_type(model_type: str) -> Family | None:
  return next((f for f in FAMILIES.values() if f.hf.model_type == model_type), None)


def model_config(config, vocab_size: int, pad_token_id: int = 0) -> ModelConfig:
  """The frozen ModelConfig of a run's ml_collections config (the models never see the latter):
  the family's shape, and the head its objective grows (objectives.Objective.model_fields)."""
  m = config.model
  dtype = accelerator.compute_dtype(m.dtype)
  head = {"nsp_head": False, "num_labels": 0, "token_labels": False, "span_head": False,
          **objectives.of(config).model_fields(config)}
  return ModelConfig(
      family=m.family, vocab_size=vocab_size, hidden_size=m.hidden_size,
      num_layers=m.num_layers, num_heads=m.num_heads, mlp_dim=m.mlp_dim,
      max_position=m.max_position, type_vocab_size=m.type_vocab_size,
      dropout_rate=m.dropout_rate, attention_dropout_rate=m.attention_dropout_rate,
      layer_norm_eps=m.layer_norm_eps, initializer_range=m.initializer_range,
      attention_impl=accelerator.attention_impl(m.attention_impl, dtype=dtype),
      dtype=dtype, param_dtype=m.param_dtype, remat=m.remat, scan_layers=m.scan_layers,
      embedding_size=m.embedding_size, shared_layers=m.shared_layers, hidden_act=m.hidden_act,
      position_offset=m.position_offset, pad_token_id=pad_token_id,
      mem_len=m.mem_len, reuse_len=config.objective.reuse_len if m.mem_len else 0,
      clamp_len=m.clamp_len, **head)
