"""What each family is in Hugging Face transformers: its tensor table and its config.json.

One `HFSpec` per family (the registry, plm_jax/families.py, points each family at its spec):
- `entries(mcfg, prefix)`: every tensor, as (transformers name, our parameter path, kind), split
  into the body and the heads: the pretraining heads (a `BertModel` checkpoint has none), or,
  for a fine-tuned classifier (mcfg.num_labels > 0), those of `*ForSequenceClassification`;
- `from_hf(hf_config)`: the plm-jax model fields of a transformers config.json;
- `to_hf(model_group, vocab_size, tokenizer)`: the config.json transformers reads back.

Kinds of entries: "same" (identical layout: embeddings, LayerNorm), "bias" (flat in transformers,
maybe [heads, head_dim] here), "linear" (torch Linear [out, in] <-> our Dense kernel [in, *out]),
"linear_in" (torch Linear <-> our DenseIn kernel [*in, out]), "conv1d" (GPT-2's Conv1D
[in, out] <-> Dense [in, *out]), "conv1d_in" (Conv1D <-> DenseIn), and ("part", axis, i, kind):
one transformers tensor is slice i along `axis` of ours (BERT's separate query / key / value are
the three parts of our fused [E, 3, heads, head_dim] projection; GPT-2's fused c_attn is already
one tensor). `to_ours` / `to_hf` convert by kind.
"""

import dataclasses
from typing import Callable

import numpy as np

from plm_jax.errors import CheckpointError
from plm_jax.models.config import ModelConfig

Entry = tuple[str, tuple, object]


@dataclasses.dataclass(frozen=True)
class HFSpec:
  model_type: str                    # transformers' config.json "model_type"
  prefix: str                        # the body's name in *ForPreTraining checkpoints
  architecture: str                  # the class an export is written as
  entries: Callable[[ModelConfig, str], tuple[list[Entry], list[Entry]]]
  from_hf: Callable[[dict], dict]    # -> {"size": model fields, "max_seq_length", "dropout"
                                     # and, if its own, "attention_dropout"}
  to_hf: Callable[..., dict]         # (model group, vocab_size, tokenizer) -> config.json
  word_embedding: tuple[str, ...]    # our path of the word embedding table
  not_exported: tuple[str, ...] = ()  # tensors (by name part) the exported class lacks, and
                                      # an import may miss
  check: Callable[[dict, str], None] = lambda hf, path: None   # refuses unsupported variants
  # A fine-tuned classifier is written as `classifier` (AutoModelForSequenceClassification). Its
  # tokenizer pads on `classifier_padding`: the side where transformers' head does not look for
  # the token it classifies. `token_type_ids`: whether the model takes segment ids (GPT-2 adds
  # them as word embeddings, so its tokenizer must not return them); `own_pad`: whether the
  # tokenizer needs a padding token of its own (see plm_jax/hf/convert.py, classifier_tokenizer).
  classifier: str = ""
  classifier_padding: str = "right"
  token_type_ids: bool = True
  own_pad: bool = False
  tagger: str = ""                   # a fine-tuned token tagger's class (*ForTokenClassification)
  # A fine-tuned question-answering model (mcfg.span_head) is written as `span_model`
  # (AutoModelForQuestionAnswering): the body without its pooler, and `qa_outputs`.
  span_model: str = ""


# --- building blocks of the tables ---------------------------------------------------------------

def head_architecture(spec: HFSpec, head: dict) -> str:
  """The transformers class a model with `head` (its ModelConfig head fields: span_head,
  num_labels, token_labels) is written as."""
  if head.get("span_head"):
    return spec.span_model
  if head.get("num_labels"):
    return spec.tagger if head.get("token_labels") else spec.classifier
  return spec.architecture


def _norm(hf: str, ours: tuple) -> list[Entry]:
  return [(f"{hf}.weight", (*ours, "scale"), "same"), (f"{hf}.bias", (*ours, "bias"), "same")]


def _dense(hf: str, ours: tuple, kind: str) -> list[Entry]:
  return [(f"{hf}.weight", (*ours, "kernel"), kind), (f"{hf}.bias", (*ours, "bias"), "bias")]


# transformers' names of the parts of one post-LN block, relative to the layer.
BERT_LAYER = dict(attention="attention.self.{}", out="attention.output.dense",
                  attention_norm="attention.output.LayerNorm", wi="intermediate.dense",
                  wo="output.dense", mlp_norm="output.LayerNorm")
ALBERT_LAYER = dict(attention="attention.{}", out="attention.dense",
                    attention_norm="attention.LayerNorm", wi="ffn", wo="ffn_output",
                    mlp_norm="full_layer_layer_norm")


def _post_ln_layer(hf: str, ours: tuple, names: dict) -> list[Entry]:
  entries = []
  qkv = (*ours, "attention", "qkv")
  for i, name in enumerate(("query", "key", "value")):
    torch_name = f"{hf}.{names['attention'].format(name)}"
    entries += [(f"{torch_name}.weight", (*qkv, "kernel"), ("part", 1, i, "linear")),
                (f"{torch_name}.bias", (*qkv, "bias"), ("part", 0, i, "bias"))]
  entries += _dense(f"{hf}.{names['out']}", (*ours, "attention", "out"), "linear_in")
  entries += _norm(f"{hf}.{names['attention_norm']}", (*ours, "attention_norm"))
  entries += _dense(f"{hf}.{names['wi']}", (*ours, "mlp", "wi"), "linear")
  entries += _dense(f"{hf}.{names['wo']}", (*ours, "mlp", "wo"), "linear_in")
  entries += _norm(f"{hf}.{names['mlp_norm']}", (*ours, "mlp_norm"))
  return entries


def _mlm_head(dense: str, norm: str, bias: str) -> list[Entry]:
  return (_dense(dense, ("mlm", "transform"), "linear") + _norm(norm, ("mlm", "norm"))
          + [(bias, ("mlm", "bias"), "same")])


def _encoder_embeddings(p: str) -> list[Entry]:
  e = ("encoder", "embeddings")
  return [(f"{p}embeddings.word_embeddings.weight", (*e, "word", "embedding"), "same"),
          (f"{p}embeddings.position_embeddings.weight", (*e, "position", "embedding"), "same"),
          (f"{p}embeddings.token_type_embeddings.weight", (*e, "segment", "embedding"),
           "same")] + _norm(f"{p}embeddings.LayerNorm", (*e, "norm"))


def _bert_body(mcfg: ModelConfig, p: str) -> list[Entry]:
  body = _encoder_embeddings(p)
  for i in range(mcfg.num_layers):
    body += _post_ln_layer(f"{p}encoder.layer.{i}", ("encoder", "layers", i), BERT_LAYER)
  return body + _dense(f"{p}pooler.dense", ("encoder", "pooler"), "linear")


# --- the tables ----------------------------------------------------------------------------------

def bert_entries(mcfg: ModelConfig, p: str) -> tuple[list[Entry], list[Entry]]:
  if mcfg.num_labels:
    return _bert_body(mcfg, p), _dense("classifier", ("classifier",), "linear")
  heads = _mlm_head("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm",
                    "cls.predictions.bias")
  if mcfg.nsp_head:
    heads += _dense("cls.seq_relationship", ("nsp",), "linear")
  return _bert_body(mcfg, p), heads


def roberta_entries(mcfg: ModelConfig, p: str) -> tuple[list[Entry], list[Entry]]:
  if mcfg.num_labels:
    # RobertaForSequenceClassification has no pooler; its head is dense + tanh + out_proj over
    # <s>, which is our pooler (tanh of a dense over the first token) + classifier: the same
    # function, dropout aside. So the pooler is written as the head's dense (the body's pooler
    # entry is skipped: not_exported).
    return _bert_body(mcfg, p), (_dense("classifier.dense", ("encoder", "pooler"), "linear")
                                 + _dense("classifier.out_proj", ("classifier",), "linear"))
  return _bert_body(mcfg, p), _mlm_head("lm_head.dense", "lm_head.layer_norm", "lm_head.bias")


def albert_entries(mcfg: ModelConfig, p: str) -> tuple[list[Entry], list[Entry]]:
  body = _encoder_embeddings(p)
  body += _dense(f"{p}encoder.embedding_hidden_mapping_in", ("encoder", "projection"), "linear")
  body += _post_ln_layer(f"{p}encoder.albert_layer_groups.0.albert_layers.0",
                         ("encoder", "layers", 0), ALBERT_LAYER)
  body += _dense(f"{p}pooler", ("encoder", "pooler"), "linear")
  if mcfg.num_labels:
    return body, _dense("classifier", ("classifier",), "linear")
  heads = _mlm_head("predictions.dense", "predictions.LayerNorm", "predictions.bias")
  if mcfg.nsp_head:
    heads += _dense("sop_classifier.classifier", ("nsp",), "linear")
  return body, heads


def gpt2_entries(mcfg: ModelConfig, p: str) -> tuple[list[Entry], list[Entry]]:
  body = [(f"{p}wte.weight", ("wte", "embedding"), "same"),
          (f"{p}wpe.weight", ("wpe", "embedding"), "same")]
  for i in range(mcfg.num_layers):
    h, o = f"{p}h.{i}", ("layers", i)
    body += _norm(f"{h}.ln_1", (*o, "attention_norm"))
    body += _dense(f"{h}.attn.c_attn", (*o, "attention", "qkv"), "conv1d")   # [E, 3E]
    body += _dense(f"{h}.attn.c_proj", (*o, "attention", "out"), "conv1d_in")
    body += _norm(f"{h}.ln_2", (*o, "mlp_norm"))
    body += _dense(f"{h}.mlp.c_fc", (*o, "mlp", "wi"), "conv1d")
    body += _dense(f"{h}.mlp.c_proj", (*o, "mlp", "wo"), "conv1d_in")
  body += _norm(f"{p}ln_f", ("final_norm",))
  if mcfg.num_labels:
    return body, [("score.weight", ("score", "kernel"), "linear")]     # no bias, as ours
  return body, []     # the LM head is tied to wte


def xlnet_entries(mcfg: ModelConfig, p: str) -> tuple[list[Entry], list[Entry]]:
  body = [(f"{p}word_embedding.weight", ("transformer", "word", "embedding"), "same"),
          (f"{p}mask_emb", ("transformer", "mask", "embedding"), "same")]
  for i in range(mcfg.num_layers):
    h, o = f"{p}layer.{i}", ("transformer", "layers", i)
    a, oa = f"{h}.rel_attn", (*o, "attention")
    body += [(f"{a}.{name}", (*oa, "qkv", "kernel"), ("part", 1, j, "same"))
             for j, name in enumerate("qkv")]
    body += [(f"{a}.o", (*oa, "out", "kernel"), "heads_out"),
             (f"{a}.r", (*oa, "r", "kernel"), "same"),
             (f"{a}.seg_embed", (*oa, "segment", "embedding"), "same")]
    body += [(f"{a}.{b}", (*oa, b), "same") for b in ("r_r_bias", "r_s_bias", "r_w_bias")]
    body += _norm(f"{a}.layer_norm", (*oa, "norm"))
    body += _norm(f"{h}.ff.layer_norm", (*o, "mlp_norm"))
    body += _dense(f"{h}.ff.layer_1", (*o, "mlp", "wi"), "linear")
    body += _dense(f"{h}.ff.layer_2", (*o, "mlp", "wo"), "linear_in")
  if mcfg.num_labels:
    # summary (E -> E), tanh, then logits_proj: our SequenceSummary (summary_proj_to_labels
    # false in the config, so transformers' summary keeps E outputs)
    return body, (_dense("sequence_summary.summary", ("classifier", "summary"), "linear")
                  + _dense("logits_proj", ("classifier", "logits"), "linear"))
  return body, [("lm_loss.bias", ("lm_bias",), "same")]     # lm_loss.weight is the embedding


def entries_of(spec: HFSpec, mcfg: ModelConfig, p: str) -> tuple[list[Entry], list[Entry]]:
  """The family's table; for a fine-tuned token tagger (mcfg.token_labels) or question-answering
  model (mcfg.span_head), the body without the [CLS] pooler (transformers builds the
  *ForTokenClassification and *ForQuestionAnswering bodies without one) and the head, one
  Linear over every token: `classifier` (hidden -> tags) or `qa_outputs` (hidden -> 2: start,
  end)."""
  if not (mcfg.span_head or (mcfg.num_labels and mcfg.token_labels)):
    return spec.entries(mcfg, p)
  body, _ = spec.entries(dataclasses.replace(mcfg, num_labels=0, token_labels=False,
                                             span_head=False), p)
  head = "qa_outputs" if mcfg.span_head else "classifier"
  return [e for e in body if "pooler" not in e[1]], _dense(head, (head,), "linear")


# --- layouts -------------------------------------------------------------------------------------

def part_index(kind) -> tuple | None:
  """The index of our tensor that a ("part", axis, i, kind) entry is, else None."""
  if isinstance(kind, tuple) and kind[0] == "part":
    return (slice(None),) * kind[1] + (kind[2],)
  return None


def base_kind(kind):
  return kind[3] if part_index(kind) is not None else kind


def to_ours(value: np.ndarray, kind, shape: tuple) -> np.ndarray:
  """A transformers tensor in our layout of `shape` (for a part: the part's shape)."""
  kind = base_kind(kind)
  if kind in ("linear", "linear_in"):
    value = value.T
  if kind == "heads_out":                   # XLNet's o [E, N, H] -> our DenseIn [N, H, E]
    value = np.moveaxis(value, 0, -1)
  if int(np.prod(value.shape)) != int(np.prod(shape)):
    raise ValueError(value.shape)
  return np.ascontiguousarray(value.reshape(shape))


def to_hf(value: np.ndarray, kind) -> np.ndarray:
  """Our tensor (for a part: the part) in transformers' layout."""
  kind = base_kind(kind)
  if kind in ("linear", "conv1d"):
    value = value.reshape(value.shape[0], -1)
  elif kind in ("linear_in", "conv1d_in"):
    value = value.reshape(-1, value.shape[-1])
  elif kind == "bias":
    value = value.reshape(-1)
  if kind in ("linear", "linear_in"):
    value = value.T
  if kind == "heads_out":
    value = np.moveaxis(value, -1, 0)
  return np.ascontiguousarray(value)


def expected_hf_shape(shape: tuple, kind) -> tuple:
  index = part_index(kind)
  part = np.zeros(shape, np.float32) if index is None else np.zeros(shape, np.float32)[index]
  return tuple(to_hf(part, kind).shape)


# --- config.json, both ways ----------------------------------------------------------------------

# transformers' activation names that are GELU, exact (erf) or its tanh approximation; any
# other activation is refused rather than imported as something it is not.
EXACT_GELU = ("gelu", "gelu_python")
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def _activation(hf: dict, field: str, default: str) -> str:
  act = hf.get(field, default)
  if act in EXACT_GELU:
    return "gelu"
  if act in TANH_GELU:
    return "gelu_new"
  raise CheckpointError(f"config.json: {field}={act!r} is not supported (plm-jax's models use "
                        f"GELU: one of {', '.join(EXACT_GELU + TANH_GELU)})")


def _encoder_from_hf(hf: dict) -> dict:
  size = dict(hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
              num_heads=hf["num_attention_heads"], mlp_dim=hf["intermediate_size"],
              max_position=hf["max_position_embeddings"],
              layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
              type_vocab_size=hf.get("type_vocab_size", 2),
              hidden_act=_activation(hf, "hidden_act", "gelu"))
  return {"size": size, "max_seq_length": 128, "dropout": hf.get("hidden_dropout_prob", 0.1)}


def _albert_from_hf(hf: dict) -> dict:
  out = _encoder_from_hf(hf)
  out["size"].update(embedding_size=hf["embedding_size"], shared_layers=True)
  return out


def _roberta_from_hf(hf: dict) -> dict:
  out = _encoder_from_hf(hf)
  out["size"].update(position_offset=True)
  return out


def _gpt2_from_hf(hf: dict) -> dict:
  if _activation(hf, "activation_function", "gelu_new") != "gelu_new":
    raise CheckpointError(f"config.json: activation_function={hf['activation_function']!r}; "
                          "plm-jax's GPT-2 uses the tanh GELU (gelu_new)")
  d = hf["n_embd"]
  size = dict(hidden_size=d, num_layers=hf["n_layer"], num_heads=hf["n_head"],
              mlp_dim=hf.get("n_inner") or 4 * d, max_position=hf["n_positions"],
              layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5))
  return {"size": size, "max_seq_length": min(hf["n_positions"], 1024),
          "dropout": hf.get("resid_pdrop", 0.1)}


def _encoder_to_hf(spec: "HFSpec", m, vocab_size: int, tokenizer) -> dict:
  out = {"architectures": [spec.architecture], "model_type": spec.model_type,
         "vocab_size": vocab_size, "hidden_size": m.hidden_size,
         "num_hidden_layers": m.num_layers, "num_attention_heads": m.num_heads,
         "intermediate_size": m.mlp_dim, "max_position_embeddings": m.max_position,
         "type_vocab_size": m.type_vocab_size, "layer_norm_eps": m.layer_norm_eps,
         "hidden_act": m.hidden_act, "hidden_dropout_prob": m.dropout_rate,
         "attention_probs_dropout_prob": m.attention_dropout_rate,
         "initializer_range": m.initializer_range, "tie_word_embeddings": True,
         "pad_token_id": tokenizer.pad_id if tokenizer is not None else 0}
  return out


def _bert_to_hf(m, vocab_size: int, tokenizer) -> dict:
  return _encoder_to_hf(BERT, m, vocab_size, tokenizer)


def _roberta_to_hf(m, vocab_size: int, tokenizer) -> dict:
  out = _encoder_to_hf(ROBERTA, m, vocab_size, tokenizer)
  if tokenizer is None:
    out["pad_token_id"] = 1                       # fairseq's dictionary puts <pad> at 1
  else:
    out["bos_token_id"], out["eos_token_id"] = tokenizer.cls_id, tokenizer.sep_id
  return out


def _albert_to_hf(m, vocab_size: int, tokenizer) -> dict:
  return {**_encoder_to_hf(ALBERT, m, vocab_size, tokenizer),
          "embedding_size": m.embedding_size or m.hidden_size, "num_hidden_groups": 1,
          "inner_group_num": 1}


def _gpt2_to_hf(m, vocab_size: int, tokenizer) -> dict:
  eos = tokenizer.role_id("eos") if tokenizer and tokenizer.role_token("eos") else 50256
  return {"architectures": [GPT2.architecture], "model_type": GPT2.model_type,
          "vocab_size": vocab_size, "n_embd": m.hidden_size, "n_layer": m.num_layers,
          "n_head": m.num_heads, "n_inner": m.mlp_dim, "n_positions": m.max_position,
          "n_ctx": m.max_position, "layer_norm_epsilon": m.layer_norm_eps,
          "activation_function": "gelu_new", "resid_pdrop": m.dropout_rate,
          "embd_pdrop": m.dropout_rate, "attn_pdrop": m.attention_dropout_rate,
          "initializer_range": m.initializer_range, "bos_token_id": eos, "eos_token_id": eos,
          "tie_word_embeddings": True}


def _albert_check(hf: dict, path: str) -> None:
  if hf.get("num_hidden_groups", 1) != 1 or hf.get("inner_group_num", 1) != 1:
    raise CheckpointError(f"{path}: ALBERT with num_hidden_groups/inner_group_num other than 1 "
                          "is not supported (all published ALBERT models use 1)")


def _xlnet_from_hf(hf: dict) -> dict:
  if hf.get("attn_type", "bi") != "bi" or hf.get("bi_data"):
    raise CheckpointError("config.json: XLNet with attn_type='uni' or bi_data=true is not "
                          "supported (the published models use 'bi' and no bi_data)")
  act = hf.get("ff_activation", "gelu")
  size = dict(hidden_size=hf["d_model"], num_layers=hf["n_layer"], num_heads=hf["n_head"],
              mlp_dim=hf["d_inner"], max_position=512,
              layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
              hidden_act=_activation({"ff_activation": act}, "ff_activation", "gelu"),
              mem_len=hf.get("mem_len") or 0, clamp_len=hf.get("clamp_len", -1))
  return {"size": size, "max_seq_length": 512, "dropout": hf.get("dropout", 0.1),
          "attention_dropout": hf.get("dropout", 0.1)}     # one rate for both, as XLNet has


def _xlnet_to_hf(m, vocab_size: int, tokenizer) -> dict:
  role = lambda r, default: (tokenizer.role_id(r)  # noqa: E731
                             if tokenizer is not None and tokenizer.role_token(r) else default)
  return {"architectures": [XLNET.architecture], "model_type": XLNET.model_type,
          "vocab_size": vocab_size, "d_model": m.hidden_size, "n_layer": m.num_layers,
          "n_head": m.num_heads, "d_head": m.hidden_size // m.num_heads, "d_inner": m.mlp_dim,
          "ff_activation": m.hidden_act, "attn_type": "bi", "bi_data": False,
          "layer_norm_eps": m.layer_norm_eps, "dropout": m.dropout_rate,
          "initializer_range": m.initializer_range, "mem_len": m.mem_len or None,
          "reuse_len": None, "clamp_len": m.clamp_len, "same_length": False,
          "summary_type": "last", "summary_use_proj": True, "summary_activation": "tanh",
          "summary_proj_to_labels": False, "summary_last_dropout": m.dropout_rate,
          "tie_word_embeddings": True,
          "pad_token_id": role("pad", 5), "bos_token_id": 1, "eos_token_id": 2}


ENCODER_WORDS = ("encoder", "embeddings", "word", "embedding")
BERT = HFSpec("bert", "bert.", "BertForPreTraining", bert_entries, _encoder_from_hf,
              _bert_to_hf, ENCODER_WORDS, classifier="BertForSequenceClassification",
              tagger="BertForTokenClassification", span_model="BertForQuestionAnswering")
ROBERTA = HFSpec("roberta", "roberta.", "RobertaForMaskedLM", roberta_entries, _roberta_from_hf,
                 _roberta_to_hf, ENCODER_WORDS, not_exported=("pooler",),
                 classifier="RobertaForSequenceClassification",
                 tagger="RobertaForTokenClassification",
                 span_model="RobertaForQuestionAnswering")
ALBERT = HFSpec("albert", "albert.", "AlbertForPreTraining", albert_entries, _albert_from_hf,
                _albert_to_hf, ENCODER_WORDS, check=_albert_check,
                classifier="AlbertForSequenceClassification",
                tagger="AlbertForTokenClassification", span_model="AlbertForQuestionAnswering")
# GPT-2's head reads the rightmost token that is not config.pad_token_id; our classifier reads
# the last real token, the closing <|endoftext|>, which is also what GPT-2 pads with: the
# exported tokenizer pads with a token of its own (own_pad), on the right (absolute positions).
GPT2 = HFSpec("gpt2", "transformer.", "GPT2LMHeadModel", gpt2_entries, _gpt2_from_hf,
              _gpt2_to_hf, ("wte", "embedding"), classifier="GPT2ForSequenceClassification",
              tagger="GPT2ForTokenClassification",
              token_type_ids=False, own_pad=True)
# XLNet's summary_type "last" reads position -1: padding goes on the left (relative positions
# and masked padding keys make that the same function as ours on right-padded inputs).
XLNET = HFSpec("xlnet", "transformer.", "XLNetLMHeadModel", xlnet_entries, _xlnet_from_hf,
               _xlnet_to_hf, ("transformer", "word", "embedding"),
               classifier="XLNetForSequenceClassification",
               tagger="XLNetForTokenClassification", classifier_padding="left",
               span_model="XLNetForQuestionAnsweringSimple")
