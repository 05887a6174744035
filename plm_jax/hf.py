"""Hugging Face interop: transformers checkpoints of BERT, RoBERTa, ALBERT and GPT-2, both ways.

  pretrained = plm_jax.hf.from_pretrained("path/to/hf-dir")    # model, config, tokenizer
  pretrained.model(ids, segment_ids, attention_mask, masked_positions)
  plm_jax.hf.save_pretrained(pretrained, "out-dir")            # transformers.from_pretrained
                                                               # reads it back

Weights are read from `model.safetensors` (directly, no pickle) or `pytorch_model.bin` (with
`torch.load(weights_only=True)`, which refuses to run pickled code). Every tensor is mapped by an
explicit table (`_entries`); an unsupported architecture, a missing tensor or a shape mismatch is
an error naming the tensor and the shape expected. A checkpoint without pretraining heads
(e.g. `BertModel`) is imported with freshly initialised heads, listed in `Pretrained.fresh`.
Export converts and gathers one tensor at a time, so a sharded model never needs a second full
copy on the writing host.
"""

import dataclasses
import json
import os
from typing import Callable, Iterator

import jax
import ml_collections
import numpy as np
from flax import nnx

from plm_jax import models
from plm_jax.configlib import make_config
from plm_jax.data.tokenizer import TextTokenizer, load_tokenizer
from plm_jax.errors import CheckpointError

SUPPORTED = ("bert", "roberta", "albert", "gpt2")
FAMILY_OF = {"bert": "bert", "roberta": "roberta", "albert": "albert", "gpt2": "gpt"}
MODEL_TYPE_OF = {v: k for k, v in FAMILY_OF.items()}


@dataclasses.dataclass
class Pretrained:
  model: nnx.Module
  config: ml_collections.ConfigDict       # a plm-jax config describing the model
  tokenizer: TextTokenizer | None
  fresh: list[str]                        # parameters not in the checkpoint (new heads)


# --- config ---------------------------------------------------------------------------------------

def read_hf_config(directory: str) -> dict:
  path = os.path.join(directory, "config.json")
  try:
    with open(path, encoding="utf-8") as f:
      hf = json.load(f)
  except FileNotFoundError:
    raise CheckpointError(f"{path} does not exist: --hf-dir must be a Hugging Face model "
                          "directory (config.json + model.safetensors or pytorch_model.bin)"
                          ) from None
  except ValueError as e:
    raise CheckpointError(f"{path} is not valid JSON ({e})") from None
  kind = hf.get("model_type")
  if kind not in SUPPORTED:
    raise CheckpointError(f"{path}: unsupported architecture model_type={kind!r} "
                          f"({hf.get('architectures')}); plm-jax imports {', '.join(SUPPORTED)}")
  if kind == "albert" and (hf.get("num_hidden_groups", 1) != 1 or
                           hf.get("inner_group_num", 1) != 1):
    raise CheckpointError(f"{path}: ALBERT with num_hidden_groups/inner_group_num other than 1 "
                          "is not supported (all published ALBERT models use 1)")
  return hf


def plm_config_from_hf(hf: dict) -> ml_collections.ConfigDict:
  """The plm-jax config of a transformers model (exact vocabulary, no padding)."""
  kind = hf["model_type"]
  if kind == "gpt2":
    d = hf["n_embd"]
    size = dict(hidden_size=d, num_layers=hf["n_layer"], num_heads=hf["n_head"],
                mlp_dim=hf.get("n_inner") or 4 * d, max_position=hf["n_positions"],
                layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5))
    objective, seq = "causal_lm", min(hf["n_positions"], 1024)
    dropout = hf.get("resid_pdrop", 0.1)
    attention_dropout = 0.0
  else:
    size = dict(hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
                num_heads=hf["num_attention_heads"], mlp_dim=hf["intermediate_size"],
                max_position=hf["max_position_embeddings"],
                layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
                type_vocab_size=hf.get("type_vocab_size", 2),
                hidden_act="gelu_new" if hf.get("hidden_act") in ("gelu_new", "gelu_pytorch_tanh")
                else "gelu")
    if kind == "albert":
      size.update(embedding_size=hf["embedding_size"], shared_layers=True)
    if kind == "roberta":
      size.update(position_offset=True)
    objective = {"bert": "mlm_nsp", "roberta": "mlm", "albert": "mlm_sop"}[kind]
    seq = 128
    dropout = hf.get("hidden_dropout_prob", 0.1)
    attention_dropout = 0.0    # the fused-kernel default; set model.attention_dropout_rate
  config = make_config(family=FAMILY_OF[kind], objective=objective, size_name="hf", size=size,
                       mesh="auto", data=dict(max_seq_length=seq, vocab_size=hf["vocab_size"]),
                       train={}, optim={})
  config.model.vocab_size = hf["vocab_size"]
  config.model.vocab_pad_multiple = 1
  config.model.dropout_rate = dropout
  config.model.attention_dropout_rate = attention_dropout
  config.model.initializer_range = hf.get("initializer_range", 0.02)
  return config


def hf_config_from_plm(config, vocab_size: int, tokenizer: TextTokenizer | None) -> dict:
  m = config.model
  family = m.family
  if family == "gpt":
    eos = tokenizer.role_id("eos") if tokenizer and tokenizer.role_token("eos") else 50256
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": vocab_size, "n_embd": m.hidden_size, "n_layer": m.num_layers,
            "n_head": m.num_heads, "n_inner": m.mlp_dim, "n_positions": m.max_position,
            "n_ctx": m.max_position, "layer_norm_epsilon": m.layer_norm_eps,
            "activation_function": "gelu_new", "resid_pdrop": m.dropout_rate,
            "embd_pdrop": m.dropout_rate, "attn_pdrop": m.attention_dropout_rate,
            "initializer_range": m.initializer_range, "bos_token_id": eos, "eos_token_id": eos,
            "tie_word_embeddings": True}
  out = {"model_type": MODEL_TYPE_OF[family], "vocab_size": vocab_size,
         "hidden_size": m.hidden_size, "num_hidden_layers": m.num_layers,
         "num_attention_heads": m.num_heads, "intermediate_size": m.mlp_dim,
         "max_position_embeddings": m.max_position, "type_vocab_size": m.type_vocab_size,
         "layer_norm_eps": m.layer_norm_eps, "hidden_act": m.hidden_act,
         "hidden_dropout_prob": m.dropout_rate,
         "attention_probs_dropout_prob": m.attention_dropout_rate,
         "initializer_range": m.initializer_range, "tie_word_embeddings": True}
  pad = tokenizer.pad_id if tokenizer is not None else (1 if family == "roberta" else 0)
  out["pad_token_id"] = pad
  if family == "bert":
    out["architectures"] = ["BertForPreTraining"]
  elif family == "roberta":
    out["architectures"] = ["RobertaForMaskedLM"]
    if tokenizer is not None:
      out["bos_token_id"], out["eos_token_id"] = tokenizer.cls_id, tokenizer.sep_id
  else:
    out.update(architectures=["AlbertForPreTraining"], embedding_size=m.embedding_size or
               m.hidden_size, num_hidden_groups=1, inner_group_num=1)
  return out


# --- the tensor table -----------------------------------------------------------------------------

# Kinds: "same" (identical layout: embeddings, LayerNorm), "bias" (flat in transformers, maybe
# [heads, head_dim] here), "linear" (torch Linear [out, in] <-> our Dense kernel [in, *out]),
# "linear_in" (torch Linear <-> our DenseIn kernel [*in, out]), "conv1d" (GPT-2's Conv1D
# [in, out] <-> Dense [in, *out]), "conv1d_in" (Conv1D <-> DenseIn), ("qkv", i, "w" / "b") (third
# i of GPT-2's fused c_attn: Conv1D [H, 3H] / bias [3H]).
Entry = tuple[str, tuple, object]


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
  for name in ("query", "key", "value"):
    entries += _dense(f"{hf}.{names['attention'].format(name)}", (*ours, "attention", name),
                      "linear")
  entries += _dense(f"{hf}.{names['out']}", (*ours, "attention", "out"), "linear_in")
  entries += _norm(f"{hf}.{names['attention_norm']}", (*ours, "attention_norm"))
  entries += _dense(f"{hf}.{names['wi']}", (*ours, "mlp", "wi"), "linear")
  entries += _dense(f"{hf}.{names['wo']}", (*ours, "mlp", "wo"), "linear_in")
  entries += _norm(f"{hf}.{names['mlp_norm']}", (*ours, "mlp_norm"))
  return entries


def _mlm_head(dense: str, norm: str, bias: str) -> list[Entry]:
  return (_dense(dense, ("mlm", "transform"), "linear") + _norm(norm, ("mlm", "norm"))
          + [(bias, ("mlm", "bias"), "same")])


def _entries(family: str, mcfg: models.ModelConfig, prefix: str) -> tuple[list[Entry],
                                                                           list[Entry]]:
  """(body entries, head entries) for a family; `prefix` is e.g. "bert." or ""."""
  p = prefix
  if family == "gpt":
    body = [(f"{p}wte.weight", ("wte", "embedding"), "same"),
            (f"{p}wpe.weight", ("wpe", "embedding"), "same")]
    for i in range(mcfg.num_layers):
      h, o = f"{p}h.{i}", ("layers", i)
      body += _norm(f"{h}.ln_1", (*o, "attention_norm"))
      for j, name in enumerate(("query", "key", "value")):
        body += [(f"{h}.attn.c_attn.weight", (*o, "attention", name, "kernel"), ("qkv", j, "w")),
                 (f"{h}.attn.c_attn.bias", (*o, "attention", name, "bias"), ("qkv", j, "b"))]
      body += _dense(f"{h}.attn.c_proj", (*o, "attention", "out"), "conv1d_in")
      body += _norm(f"{h}.ln_2", (*o, "mlp_norm"))
      body += _dense(f"{h}.mlp.c_fc", (*o, "mlp", "wi"), "conv1d")
      body += _dense(f"{h}.mlp.c_proj", (*o, "mlp", "wo"), "conv1d_in")
    body += _norm(f"{p}ln_f", ("final_norm",))
    return body, []

  e = ("encoder",)
  body = [(f"{p}embeddings.word_embeddings.weight", (*e, "embeddings", "word", "embedding"),
           "same"),
          (f"{p}embeddings.position_embeddings.weight",
           (*e, "embeddings", "position", "embedding"), "same"),
          (f"{p}embeddings.token_type_embeddings.weight",
           (*e, "embeddings", "segment", "embedding"), "same")]
  body += _norm(f"{p}embeddings.LayerNorm", (*e, "embeddings", "norm"))
  if family == "albert":
    body += _dense(f"{p}encoder.embedding_hidden_mapping_in", (*e, "projection"), "linear")
    body += _post_ln_layer(f"{p}encoder.albert_layer_groups.0.albert_layers.0",
                           (*e, "layers", 0), ALBERT_LAYER)
    body += _dense(f"{p}pooler", (*e, "pooler"), "linear")
    heads = _mlm_head("predictions.dense", "predictions.LayerNorm", "predictions.bias")
    if mcfg.nsp_head:
      heads += _dense("sop_classifier.classifier", ("nsp",), "linear")
    return body, heads
  for i in range(mcfg.num_layers):
    body += _post_ln_layer(f"{p}encoder.layer.{i}", (*e, "layers", i), BERT_LAYER)
  body += _dense(f"{p}pooler.dense", (*e, "pooler"), "linear")
  if family == "roberta":
    heads = _mlm_head("lm_head.dense", "lm_head.layer_norm", "lm_head.bias")
  else:
    heads = _mlm_head("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm",
                      "cls.predictions.bias")
    if mcfg.nsp_head:
      heads += _dense("cls.seq_relationship", ("nsp",), "linear")
  return body, heads


def _to_ours(value: np.ndarray, kind, shape: tuple) -> np.ndarray:
  if kind in ("linear", "linear_in"):
    value = value.T
  elif isinstance(kind, tuple):                      # ("qkv", i)
    third = value.shape[-1] // 3
    value = value[..., kind[1] * third:(kind[1] + 1) * third]
  if int(np.prod(value.shape)) != int(np.prod(shape)):
    raise ValueError(value.shape)
  return np.ascontiguousarray(value.reshape(shape))


def _to_hf(value: np.ndarray, kind) -> np.ndarray:
  if kind in ("linear", "conv1d") or (isinstance(kind, tuple) and kind[2] == "w"):
    value = value.reshape(value.shape[0], -1)
  elif kind in ("linear_in", "conv1d_in"):
    value = value.reshape(-1, value.shape[-1])
  elif kind == "bias" or isinstance(kind, tuple):
    value = value.reshape(-1)
  if kind in ("linear", "linear_in"):
    value = value.T
  return np.ascontiguousarray(value)


# --- weights on disk ------------------------------------------------------------------------------

def read_weights(directory: str) -> dict[str, np.ndarray]:
  """All tensors of a transformers checkpoint as float32 numpy arrays, without running pickle."""
  st = os.path.join(directory, "model.safetensors")
  bins = os.path.join(directory, "pytorch_model.bin")
  if os.path.exists(st):
    from safetensors.numpy import load_file
    try:
      raw = load_file(st)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
      raise CheckpointError(f"{st} is unreadable ({e})") from None
  elif os.path.exists(bins):
    try:
      import torch
    except ImportError:
      raise CheckpointError(f"{bins} needs torch to read; convert it to model.safetensors or "
                            "pip install torch") from None
    try:
      state = torch.load(bins, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch refuses unsafe pickles with various errors
      raise CheckpointError(f"{bins} cannot be read safely ({str(e)[:200]})") from None
    raw = {k: v.float().numpy() for k, v in state.items() if hasattr(v, "numpy")}
  else:
    raise CheckpointError(f"{directory} holds neither model.safetensors nor pytorch_model.bin")
  return {k: np.asarray(v, dtype=np.float32) for k, v in raw.items()}


def _prefix(weights: dict, family: str) -> str:
  name = {"gpt": "transformer.", "bert": "bert.", "roberta": "roberta.",
          "albert": "albert."}[family]
  return name if any(k.startswith(name) for k in weights) else ""


def _lookup(weights: dict, key: str):
  if key in weights:
    return weights[key]
  # Checkpoints converted from TF name LayerNorm parameters gamma / beta.
  for a, b in ((".weight", ".gamma"), (".bias", ".beta")):
    if key.endswith(a) and key[: -len(a)] + b in weights:
      return weights[key[: -len(a)] + b]
  return None


def _get(tree: dict, path: tuple):
  for k in path:
    tree = tree[k]
  return tree


def _set(tree: dict, path: tuple, value) -> None:
  for k in path[:-1]:
    tree = tree[k]
  tree[path[-1]] = value


def params_from_hf(weights: dict, mcfg: models.ModelConfig, template: dict
                   ) -> tuple[dict, list[str]]:
  """Fills `template` (a pure dict of arrays with the right shapes) from HF `weights`;
  returns the params and the paths left at their initial values (absent heads)."""
  family = mcfg.family
  prefix = _prefix(weights, family)
  body, heads = _entries(family, mcfg, prefix)
  params = jax.tree.map(np.asarray, template)
  has_heads = any(_lookup(weights, k) is not None for k, _, _ in heads)
  fresh = []
  for key, path, kind in body + heads:
    target = _get(params, path)
    value = _lookup(weights, key)
    if value is None:
      optional = (key, path, kind) in heads and not has_heads or (
          family == "roberta" and "pooler" in key)
      if optional:
        fresh.append("/".join(map(str, path)))
        continue
      raise CheckpointError(f"the checkpoint has no tensor {key!r} (expected shape "
                            f"{_expected_hf_shape(target.shape, kind)}); it does not match a "
                            f"{MODEL_TYPE_OF[family]} model of this config")
    try:
      _set(params, path, _to_ours(value, kind, target.shape).astype(target.dtype))
    except ValueError:
      raise CheckpointError(f"tensor {key!r} has shape {tuple(value.shape)}, expected "
                            f"{_expected_hf_shape(target.shape, kind)}") from None
  return params, sorted(set(fresh))


def _expected_hf_shape(shape: tuple, kind) -> tuple:
  hf = tuple(_to_hf(np.zeros(shape, np.float32), kind).shape)
  return (*hf[:-1], 3 * hf[-1]) if isinstance(kind, tuple) else hf


def hf_tensors(params: dict, mcfg: models.ModelConfig, fetch: Callable = None
               ) -> Iterator[tuple[str, np.ndarray]]:
  """(name, tensor) in transformers' layout, one tensor at a time (fetched to this host only
  when it is its turn)."""
  fetch = fetch or _fetch
  family = mcfg.family
  prefix = {"gpt": "transformer.", "bert": "bert.", "roberta": "roberta.",
            "albert": "albert."}[family]
  body, heads = _entries(family, mcfg, prefix)
  pending_qkv: dict[str, list] = {}
  for key, path, kind in body + heads:
    if family == "roberta" and "pooler" in key:
      continue                                   # RobertaForMaskedLM has no pooler
    value = _to_hf(fetch(_get(params, path)), kind)
    if isinstance(kind, tuple):                  # GPT-2's fused q/k/v: emit when complete
      pending_qkv.setdefault(key, []).append(value)
      if len(pending_qkv[key]) == 3:
        yield key, np.concatenate(pending_qkv.pop(key), axis=-1)
      continue
    yield key, value


def _fetch(x) -> np.ndarray:
  """One parameter to this host, gathered across processes when the run spans several."""
  if jax.process_count() > 1 and isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(jax.device_get(x), dtype=np.float32)


# --- public API -----------------------------------------------------------------------------------

def model_config_for(config, vocab_size: int, pad_token_id: int) -> models.ModelConfig:
  from plm_jax.train import model_config   # local: train imports this module's users
  return model_config(config, vocab_size, pad_token_id)


def from_pretrained(directory: str, dtype: str = "float32") -> Pretrained:
  """Reads a local Hugging Face directory into a plm-jax model (and its tokenizer, if any)."""
  hf = read_hf_config(directory)
  config = plm_config_from_hf(hf)
  config.model.dtype = dtype
  tokenizer = _maybe_tokenizer(directory)
  pad = hf.get("pad_token_id")
  pad = pad if isinstance(pad, int) else (tokenizer.pad_id if tokenizer else 0)
  mcfg = model_config_for(config, hf["vocab_size"], pad)
  model = models.build(mcfg, nnx.Rngs(config.train.seed))
  graphdef, state = nnx.split(model, nnx.Param)
  template = nnx.to_pure_dict(state)
  params, fresh = params_from_hf(read_weights(directory), mcfg, template)
  return Pretrained(nnx.merge(graphdef, params), config, tokenizer, fresh)


def _maybe_tokenizer(directory: str) -> TextTokenizer | None:
  names = ("tokenizer.json", "vocab.json", "vocab.txt")
  if not any(os.path.exists(os.path.join(directory, n)) for n in names):
    return None
  return load_tokenizer(directory)


def save_pretrained(pretrained: Pretrained, directory: str) -> None:
  """Writes config.json, model.safetensors and the tokenizer for transformers."""
  params = nnx.to_pure_dict(nnx.state(pretrained.model, nnx.Param))
  vocab = int(np.shape(_get(params, ("wte", "embedding") if pretrained.config.model.family ==
                             "gpt" else ("encoder", "embeddings", "word", "embedding")))[0])
  pad = pretrained.tokenizer.pad_id if pretrained.tokenizer else 0
  write_hf_directory(directory, params, pretrained.config,
                     model_config_for(pretrained.config, vocab, pad), pretrained.tokenizer)


def write_hf_directory(directory: str, params: dict, config, mcfg: models.ModelConfig,
                       tokenizer: TextTokenizer | None) -> None:
  from safetensors.numpy import save_file
  tensors = dict(hf_tensors(params, mcfg))
  if jax.process_index() != 0:
    return
  os.makedirs(directory, exist_ok=True)
  save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
    json.dump(hf_config_from_plm(config, mcfg.vocab_size, tokenizer), f, indent=2)
  if tokenizer is not None:
    tokenizer.save(directory)
    specials = {f"{r}_token": tokenizer.role_token(r) for r in ("pad", "unk", "cls", "sep",
                                                                  "mask")
                if tokenizer.role_token(r)}
    if config.model.family == "gpt":
      eos = tokenizer.role_token("eos")
      specials = {"bos_token": eos, "eos_token": eos, "unk_token": eos}
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
      json.dump({"model_max_length": config.model.max_position, **specials}, f, indent=2)
