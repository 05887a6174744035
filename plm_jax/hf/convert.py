"""Hugging Face interop: transformers checkpoints of BERT, RoBERTa, ALBERT, GPT-2 and XLNet,
both ways.

  pretrained = plm_jax.hf.from_pretrained("path/to/hf-dir")    # model, config, tokenizer
  pretrained.model(ids, segment_ids, attention_mask, masked_positions)
  plm_jax.hf.save_pretrained(pretrained, "out-dir")            # transformers.from_pretrained
                                                               # reads it back

Weights are read from `model.safetensors` (directly, no pickle) or `pytorch_model.bin` (with
`torch.load(weights_only=True)`, which refuses to run pickled code). Every tensor is mapped by an
explicit table (plm_jax/hf/tables.py, one per family); an unsupported architecture, a missing
tensor or a shape mismatch is an error naming the tensor and the shape expected. A checkpoint without pretraining heads
(e.g. `BertModel`) is imported with freshly initialised heads, listed in `Pretrained.fresh`.
Export converts and gathers one tensor at a time, so a sharded model never needs a second full
copy on the writing host. A fine-tuned classifier (a config whose objective grows a head) is
written as its family's `*ForSequenceClassification`, with its labels in config.json and a
tokenizer that lays out texts and pads them as the classifier expects (`classifier_tokenizer`).
"""

import dataclasses
import functools
import json
import os
from typing import Callable, Iterator

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from safetensors.numpy import load_file, save_file
from tokenizers import AddedToken, Tokenizer, processors

from plm_jax import families, objectives
from plm_jax.families import model_config
from plm_jax.configlib import make_config
from plm_jax.data.tokenizer import TextTokenizer, load_tokenizer
from plm_jax.errors import CheckpointError
from plm_jax.hf.tables import (base_kind, entries_of, expected_hf_shape, head_architecture,
                               part_index, to_hf, to_ours)
from plm_jax.models.config import ModelConfig


@dataclasses.dataclass
class Pretrained:
  graphdef: object                        # the model's structure (nnx.split)
  params: dict                            # its parameters, a pure dict of numpy arrays
  config: ml_collections.ConfigDict       # a plm-jax config describing the model
  tokenizer: TextTokenizer | None
  fresh: list[str]                        # parameters not in the checkpoint (new heads)

  @functools.cached_property
  def model(self) -> nnx.Module:
    """The parameters as a callable nnx module."""
    return nnx.merge(self.graphdef, self.params)


# --- config ---------------------------------------------------------------------------------------

def hub_cache_dir() -> str:
  """Where huggingface_hub keeps downloaded models: $HF_HUB_CACHE, else $HF_HOME/hub, else
  ~/.cache/huggingface/hub."""
  return os.environ.get("HF_HUB_CACHE") or os.path.join(
      os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache",
                                                 "huggingface"), "hub")


def resolve_model(name: str) -> str:
  """A local directory as given, or a model id ("org/name") found in the local Hugging Face
  cache (its `main` snapshot; nothing is downloaded, as transformers' local_files_only)."""
  if os.path.isdir(name) or name.count("/") != 1 or name.startswith((".", "/", "~")):
    return name
  repo = os.path.join(hub_cache_dir(), "models--" + name.replace("/", "--"))
  try:
    with open(os.path.join(repo, "refs", "main"), encoding="utf-8") as f:
      revision = f.read().strip()
  except OSError:
    return name                       # not cached: read_hf_config names what is missing
  snapshot = os.path.join(repo, "snapshots", revision)
  return snapshot if os.path.isdir(snapshot) else name


def read_hf_config(directory: str) -> dict:
  path = os.path.join(directory, "config.json")
  try:
    with open(path, encoding="utf-8") as f:
      hf = json.load(f)
  except FileNotFoundError:
    nested = next((os.path.join(directory, d) for d in ("model", "hf", "checkpoint")
                   if os.path.exists(os.path.join(directory, d, "config.json"))), None)
    hint = (f"; did you mean {nested}?" if nested else
            f" (nor is {directory!r} a model id in the local Hugging Face cache "
            f"{hub_cache_dir()})" if directory.count("/") == 1 else "")
    raise CheckpointError(f"{path} does not exist: --hf-dir must be a Hugging Face model "
                          "directory (config.json + model.safetensors or pytorch_model.bin) or "
                          f"a model id in the local Hugging Face cache{hint}") from None
  except ValueError as e:
    raise CheckpointError(f"{path} is not valid JSON ({e})") from None
  kind = hf.get("model_type")
  family = families.by_hf_model_type(kind)
  if family is None:
    supported = ", ".join(f.hf.model_type for f in families.FAMILIES.values())
    raise CheckpointError(f"{path}: unsupported architecture model_type={kind!r} "
                          f"({hf.get('architectures')}); plm-jax imports {supported}")
  family.hf.check(hf, path)
  return hf


def plm_config_from_hf(hf: dict) -> ml_collections.ConfigDict:
  """The plm-jax config of a transformers model (exact vocabulary, no padding)."""
  family = families.by_hf_model_type(hf["model_type"])
  fields = family.hf.from_hf(hf)
  config = make_config(family=family.name, size_name="hf", model=fields["size"], mesh="auto",
                       data=dict(max_seq_length=fields["max_seq_length"],
                                 vocab_size=hf["vocab_size"]))
  config.model.vocab_size = hf["vocab_size"]
  config.model.vocab_pad_multiple = 1
  config.model.dropout_rate = fields["dropout"]
  # the fused-kernel default (see the model group); XLNet drops out attention as it was trained
  config.model.attention_dropout_rate = fields.get("attention_dropout", 0.0)
  config.model.initializer_range = hf.get("initializer_range", 0.02)
  return config


def hf_config_from_plm(config, vocab_size: int, tokenizer: TextTokenizer | None,
                       pad_id: int | None = None) -> dict:
  """transformers' config.json; a fine-tuned head's (a classifier's, a tagger's) names its
  class, its labels and `pad_id`, the padding token of its exported tokenizer."""
  spec = families.get(config.model.family).hf
  out = spec.to_hf(config.model, vocab_size, tokenizer)
  head = objectives.of(config).model_fields(config)
  if head.get("span_head"):             # extractive QA: start / end logits
    return {**out, "architectures": [head_architecture(spec, head)],
            **({"pad_token_id": pad_id} if pad_id is not None else {})}
  if not head.get("num_labels"):
    return out
  k = config.classify
  names = list(k.label_names or ())
  id2label = {i: names[i] if i < len(names) and names[i] else f"LABEL_{i}"
              for i in range(k.num_classes)}
  out.update(architectures=[head_architecture(spec, head)], num_labels=k.num_classes,
             id2label={str(i): n for i, n in id2label.items()},
             label2id={n: i for i, n in id2label.items()},
             # finetune trains one output with mean squared error, more with cross-entropy
             problem_type="regression" if k.num_classes == 1 else "single_label_classification")
  if head.get("token_labels"):          # a tagger: cross-entropy per token
    del out["problem_type"]
  if pad_id is not None:
    out["pad_token_id"] = pad_id
  return out


# --- weights on disk ------------------------------------------------------------------------------

def read_weights(directory: str) -> dict[str, np.ndarray]:
  """All tensors of a transformers checkpoint as float32 numpy arrays, without running pickle."""
  st = os.path.join(directory, "model.safetensors")
  bins = os.path.join(directory, "pytorch_model.bin")
  if os.path.exists(st):
    try:
      raw = load_file(st)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
      raise CheckpointError(f"{st} is unreadable ({e})") from None
  elif os.path.exists(bins):
    try:
      import torch      # optional: only old pickled checkpoints need it
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


def _prefix(weights: dict, spec) -> str:
  return spec.prefix if any(k.startswith(spec.prefix) for k in weights) else ""


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


def _locate(tree: dict, path: tuple, kind) -> tuple[tuple, tuple | None]:
  """(our parameter's path, the index of the transformers tensor within it, or None for the
  whole). The tables name each layer's parameters (..., "layers", i, ...); with stacked layers
  (model.scan_layers) that is slice i of the stacked parameter; a ("part", ...) entry is a
  slice of it too (BERT's query / key / value of the fused projection)."""
  node, lead = tree, ()
  for n, key in enumerate(path):
    if isinstance(key, int) and key not in node:        # stacked: layer i is a slice
      path, lead = path[:n] + path[n + 1:], (key,)
      break
    node = node[key]
  part = part_index(kind) or ()
  index = lead + part
  return path, (index or None)


def _not_exported(spec, key: str) -> bool:
  return any(part in key for part in spec.not_exported)


def params_from_hf(weights: dict, mcfg: ModelConfig, template: dict) -> tuple[dict, list[str]]:
  """Fills `template` (a pure dict of arrays with the right shapes) from HF `weights`;
  returns the params and the paths left at their initial values (absent heads)."""
  spec = families.get(mcfg.family).hf
  body, heads = entries_of(spec, mcfg, _prefix(weights, spec))
  params = jax.tree.map(np.array, template)         # writable copies: slices are set in place
  has_heads = any(_lookup(weights, k) is not None for k, _, _ in heads)
  fresh = []
  for key, table_path, kind in body + heads:
    path, index = _locate(params, table_path, kind)
    target = _get(params, path) if index is None else _get(params, path)[index]
    value = _lookup(weights, key)
    if value is None:
      optional = (key, table_path, kind) in heads and not has_heads or _not_exported(spec, key)
      if optional:
        fresh.append("/".join(map(str, table_path)))
        continue
      raise CheckpointError(f"the checkpoint has no tensor {key!r} (expected shape "
                            f"{expected_hf_shape(target.shape, base_kind(kind))}); it does not "
                            f"match a {spec.model_type} model of this config")
    try:
      if index is None:
        _set(params, path, to_ours(value, kind, target.shape).astype(target.dtype))
      else:                                      # a slice: one layer and/or one of q / k / v
        _get(params, path)[index] = to_ours(value, kind, target.shape)
    except ValueError:
      raise CheckpointError(f"tensor {key!r} has shape {tuple(value.shape)}, expected "
                            f"{expected_hf_shape(target.shape, base_kind(kind))}") from None
  return params, sorted(set(fresh))


def hf_tensors(params: dict, mcfg: ModelConfig, fetch: Callable = None
               ) -> Iterator[tuple[str, np.ndarray]]:
  """(name, tensor) in transformers' layout, one tensor at a time (fetched to this host only
  when it is its turn)."""
  fetch = fetch or _fetch
  spec = families.get(mcfg.family).hf
  body, heads = entries_of(spec, mcfg, spec.prefix)
  for key, table_path, kind in body + heads:
    if _not_exported(spec, key):
      continue                                   # e.g. RobertaForMaskedLM has no pooler
    path, index = _locate(params, table_path, kind)
    tensor = _get(params, path)
    # A slice (one layer of stacked ones, one of q / k / v) is cut where the tensor lives, so
    # only the slice comes to this host.
    yield key, to_hf(fetch(tensor if index is None else tensor[index]), kind)


def _fetch(x) -> np.ndarray:
  """One parameter to this host, gathered across processes when the run spans several."""
  if jax.process_count() > 1 and isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(jax.device_get(x), dtype=np.float32)


# --- public API -----------------------------------------------------------------------------------

def from_pretrained(directory: str, dtype: str = "float32") -> Pretrained:
  """Reads a local Hugging Face directory, or a model id ("org/name") already in the local
  Hugging Face cache, into a plm-jax model (and its tokenizer, if any)."""
  directory = resolve_model(directory)
  hf = read_hf_config(directory)
  config = plm_config_from_hf(hf)
  config.model.dtype = dtype
  tokenizer = _maybe_tokenizer(directory)
  pad = hf.get("pad_token_id")
  pad = pad if isinstance(pad, int) else (tokenizer.pad_id if tokenizer else 0)
  mcfg = model_config(config, hf["vocab_size"], pad)
  model = families.build(mcfg, nnx.Rngs(config.train.seed))
  graphdef, state = nnx.split(model, nnx.Param)
  template = nnx.to_pure_dict(state)
  params, fresh = params_from_hf(read_weights(directory), mcfg, template)
  return Pretrained(graphdef, params, config, tokenizer, fresh)


def _maybe_tokenizer(directory: str) -> TextTokenizer | None:
  names = ("tokenizer.json", "vocab.json", "vocab.txt", "spiece.model")
  if not any(os.path.exists(os.path.join(directory, n)) for n in names):
    return None
  return load_tokenizer(directory)


def save_pretrained(pretrained: Pretrained, directory: str) -> None:
  """Writes config.json, model.safetensors and the tokenizer for transformers."""
  params = pretrained.params
  family = families.get(pretrained.config.model.family)
  vocab = int(np.shape(_get(params, family.hf.word_embedding))[0])
  pad = pretrained.tokenizer.pad_id if pretrained.tokenizer else 0
  write_hf_directory(directory, params, pretrained.config,
                     model_config(pretrained.config, vocab, pad), pretrained.tokenizer)


# The padding token a GPT-2 classifier's exported tokenizer gets (the first name not taken).
OWN_PAD_NAMES = ("<|pad|>", "<|padding|>", "<|plm_jax_pad|>")


def classifier_tokenizer(tokenizer: TextTokenizer, family_name: str) -> tuple[TextTokenizer, int]:
  """(the tokenizer of an exported classifier, its padding id): a copy of the run's that adds the
  special tokens of the family's pair layout around one text or a pair, with the segment ids the
  classifier was fine-tuned with (plm_jax/finetune/classify/data.py, encode), so that `tokenizer(texts)`
  or `tokenizer(texts, pairs)` in transformers gives the inputs plm-jax classified.

  GPT-2: plm-jax pads with <|endoftext|>, and its classifier reads the last real token, the
  <|endoftext|> that ends every example (`a <eos>`, `a <eos> b <eos>`). transformers'
  GPT2ForSequenceClassification ignores the attention mask there and reads the rightmost token
  that is not config.pad_token_id: with pad = <|endoftext|> it would read the token before the
  closing one, and with no pad it refuses batches. So the export adds a padding token of its own
  (<|pad|>, after the vocabulary: never produced from text), pads on the right with it (GPT-2's
  positions are absolute: left padding would move them) and makes it config.pad_token_id; the
  rightmost non-pad token is then the closing <|endoftext|>, as in plm-jax."""
  family = families.get(family_name)
  tok = Tokenizer.from_str(tokenizer.tokenizer.to_str())
  pad_token = tokenizer.role_token("pad") or tokenizer.role_token("eos")
  if family.hf.own_pad:
    pad_token = next(n for n in OWN_PAD_NAMES if tok.token_to_id(n) is None)
    tok.add_special_tokens([AddedToken(pad_token, special=True)])
  layout = family.pair_layout

  def part(roles, segment, last=None):
    marks = [f"{tokenizer.role_token(r)}:{segment}" for r in roles]
    if marks and last is not None:
      marks[-1] = f"{tokenizer.role_token(roles[-1])}:{last}"
    return marks

  single = [*part(layout.prefix, 0), "$A:0", *part(layout.suffix, 0, layout.last_segment)]
  pair = [*part(layout.prefix, 0), "$A:0", *part(layout.middle, 0), f"$B:{layout.b_segment}",
          *part(layout.suffix, layout.b_segment, layout.last_segment)]
  roles = {*layout.prefix, *layout.middle, *layout.suffix}
  template = processors.TemplateProcessing(
      single=" ".join(single), pair=" ".join(pair),
      special_tokens=sorted((tokenizer.role_token(r), tokenizer.role_id(r)) for r in roles))
  # byte-level BPE keeps its offset processing; any template it had is replaced by the layout
  keep = tok.post_processor if isinstance(tok.post_processor, processors.ByteLevel) else None
  tok.post_processor = processors.Sequence([keep, template]) if keep else template
  exported = TextTokenizer(tok, tokenizer.kind, source=tokenizer.source)
  return exported, exported.id_of(pad_token)


def write_hf_directory(directory: str, params: dict, config, mcfg: ModelConfig,
                       tokenizer: TextTokenizer | None) -> None:
  tensors = dict(hf_tensors(params, mcfg))
  if jax.process_index() != 0:
    return
  # fine-tuned models (classifiers, taggers, question answering) come with the tokenizer of
  # their layout
  classifier = objectives.fine_tuned_head(config) is not None
  vocab_size, pad_id, spec = mcfg.vocab_size, None, families.get(config.model.family).hf
  if classifier:
    if tokenizer is None:
      raise CheckpointError("a classifier is exported with its tokenizer; none was given")
    tokenizer, pad_id = classifier_tokenizer(tokenizer, config.model.family)
    if pad_id >= vocab_size:          # a padding token of its own, past the embedding table:
      vocab_size = pad_id + 1         # a zero row (only ever at padded positions, never read)
      key = next(k for k, path, _ in entries_of(spec, mcfg, spec.prefix)[0]
                 if path == spec.word_embedding)
      table = tensors[key]
      tensors[key] = np.concatenate(
          [table, np.zeros((vocab_size - len(table), table.shape[1]), table.dtype)])
  os.makedirs(directory, exist_ok=True)
  weights = os.path.join(directory, "model.safetensors")
  save_file(tensors, weights, metadata={"format": "pt"})
  umask = os.umask(0)                     # safetensors writes 0600; the other files follow
  os.umask(umask)                         # the umask, and so do the weights
  os.chmod(weights, 0o666 & ~umask)
  with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
    json.dump(hf_config_from_plm(config, vocab_size, tokenizer, pad_id), f, indent=2)
  if tokenizer is not None:
    tokenizer.save(directory)
    specials = {f"{r}_token": tokenizer.role_token(r) for r in ("pad", "unk", "cls", "sep",
                                                                  "mask")
                if tokenizer.role_token(r)}
    if families.get(config.model.family).decoder:
      eos = tokenizer.role_token("eos")           # GPT-2 uses <|endoftext|> for all three
      specials = {"bos_token": eos, "eos_token": eos, "unk_token": eos}
    # RoBERTa's positions start after padding_idx (<pad> = 1: 514 rows, 512 tokens)
    longest = config.model.max_position - (tokenizer.pad_id + 1 if config.model.position_offset
                                           else 0)
    settings = {"model_max_length": longest, **specials}
    if classifier:
      # tokenizer.json as saved, template included: transformers' per-model tokenizer classes
      # would rebuild normalisation and special tokens their own way
      settings.update(
          tokenizer_class="PreTrainedTokenizerFast", pad_token=tokenizer.tokenizer.id_to_token(
              pad_id), padding_side=spec.classifier_padding,
          model_input_names=["input_ids", *(["token_type_ids"] if spec.token_type_ids else []),
                             "attention_mask"])
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
      json.dump(settings, f, indent=2)
