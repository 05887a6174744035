"""Tokenizers (Hugging Face `tokenizers`): WordPiece for BERT, byte-level BPE for GPT-2 and
RoBERTa, a SentencePiece-style Unigram for XLNet.

Reads the files people already have -- BERT's `vocab.txt`, GPT-2's `vocab.json` + `merges.txt`,
XLNet's SentencePiece `spiece.model`, any `tokenizer.json` -- or trains a new vocabulary. Special tokens are found by name in the
vocabulary ([CLS] or <s>, [MASK] or <mask>, ...), never assumed to sit at fixed ids. The
tokenizer is saved as `tokenizer.json` in the workdir beside the checkpoints, so a restored run
needs nothing else.
"""

import dataclasses
import json
import os
from typing import Iterable

import numpy as np
from tokenizers import (Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers,
                        processors, trainers)

from plm_jax.errors import DataError

TOKENIZER_FILE = "tokenizer.json"
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
GPT_SPECIALS = ("<|endoftext|>",)
ROBERTA_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")   # fairseq's order: pad is 1
# XLNet's spiece.model order: <unk> 0, <s> 1, </s> 2, <cls> 3, <sep> 4, <pad> 5, <mask> 6, ...
XLNET_SPECIALS = ("<unk>", "<s>", "</s>", "<cls>", "<sep>", "<pad>", "<mask>", "<eod>", "<eop>")
METASPACE = "\u2581"              # SentencePiece's word-start mark
# Role -> the names that role's token has in the vocabularies in use (BERT, RoBERTa, GPT-2).
ROLE_TOKENS = {
    "pad": ("[PAD]", "<pad>"),
    "unk": ("[UNK]", "<unk>"),
    "cls": ("[CLS]", "<cls>", "<s>"),          # XLNet's vocabulary has both <cls> and <s>
    "sep": ("[SEP]", "<sep>", "</s>"),
    "mask": ("[MASK]", "<mask>"),
    "eos": ("<|endoftext|>", "</s>"),
}
MLM_ROLES = ("cls", "sep", "mask", "pad")
LM_ROLES = ("eos",)


@dataclasses.dataclass
class TextTokenizer:
  """A `tokenizers.Tokenizer` plus the ids of its special tokens, found by name."""

  tokenizer: Tokenizer
  kind: str                              # "wordpiece", "bpe" or "unigram"
  source: str = "<memory>"               # where it was read from (for error messages)

  # --- special tokens ------------------------------------------------------------------------
  def id_of(self, token: str) -> int | None:
    return self.tokenizer.token_to_id(token)

  def role_token(self, role: str) -> str | None:
    for name in ROLE_TOKENS[role]:
      if self.id_of(name) is not None:
        return name
    return None

  def role_id(self, role: str) -> int:
    name = self.role_token(role)
    if name is None:
      raise DataError(f"the tokenizer {self.source} has no {role} token (one of "
                      f"{list(ROLE_TOKENS[role])}); add it to the vocabulary or retrain it")
    return self.id_of(name)

  def require(self, roles: Iterable[str]) -> None:
    """Raises a DataError naming the file if any role's token is missing."""
    missing = [f"{r} ({'/'.join(ROLE_TOKENS[r])})" for r in roles if self.role_token(r) is None]
    if missing:
      raise DataError(f"the tokenizer {self.source} lacks the special token(s) "
                      f"{', '.join(missing)}; add them to the vocabulary or retrain it")

  @property
  def pad_id(self) -> int:
    return self.role_id("pad") if self.role_token("pad") else self.role_id("eos")

  @property
  def cls_id(self) -> int:
    return self.role_id("cls")

  @property
  def sep_id(self) -> int:
    return self.role_id("sep")

  @property
  def mask_id(self) -> int:
    return self.role_id("mask")

  @property
  def eos_id(self) -> int:
    return self.role_id("eos")

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def special_ids(self) -> np.ndarray:
    """Ids of every role token present and of every added special token."""
    names = {self.role_token(r) for r in ROLE_TOKENS} - {None}
    added = {t.content for t in self.tokenizer.get_added_tokens_decoder().values() if t.special}
    return np.array(sorted({self.id_of(t) for t in names | added}), np.int32)

  def regular_ids(self) -> np.ndarray:
    """Every id that is not a special token (what MLM's "random token" is drawn from)."""
    return np.setdiff1d(np.arange(self.vocab_size, dtype=np.int32), self.special_ids())

  def word_starts(self) -> np.ndarray:
    """[vocab] bool: True for a token that begins a word (whole-word and n-gram masking
    group a word's pieces): WordPiece marks continuations with "##", byte-level BPE marks word
    starts with "Ġ" (a leading space), SentencePiece with "▁" (and, as XLNet's data pipeline
    counts them, a punctuation mark starts a word too)."""
    vocab = self.tokenizer.get_vocab(with_added_tokens=True)
    starts = np.ones(self.vocab_size, bool)
    for token, i in vocab.items():
      if i >= self.vocab_size:
        continue
      if self.kind == "wordpiece":
        starts[i] = not token.startswith("##")
      elif self.kind == "unigram":
        starts[i] = token.startswith(METASPACE) or token in _PUNCTUATION
      else:
        starts[i] = token.startswith("\u0120")
    starts[self.special_ids()] = True
    return starts

  # --- text ---------------------------------------------------------------------------------
  def __call__(self, text: str) -> list[int]:
    """tok("some text") -> ids, without special tokens (as `encode`)."""
    return self.encode(text)

  def encode(self, text: str) -> list[int]:
    """The ids of one text, without special tokens."""
    return self.encode_batch([text])[0]

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    """Ids without any special tokens (the example builders add them). Runs on all cores."""
    return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

  def decode(self, ids) -> str:
    return self.tokenizer.decode(list(ids), skip_special_tokens=False)

  # --- files --------------------------------------------------------------------------------
  def save(self, directory: str) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, TOKENIZER_FILE)
    self.tokenizer.save(path)
    return path

  @classmethod
  def from_json(cls, text: str) -> "TextTokenizer":
    """A tokenizer from the text of a tokenizer.json (e.g. sent by another process)."""
    tok = Tokenizer.from_str(text)
    return cls(tok, _kind_of(tok), source="<from process 0>")

  @classmethod
  def load(cls, path: str) -> "TextTokenizer":
    """Reads a tokenizer.json, a BERT vocab.txt, a GPT-2 vocab.json (+ merges.txt beside it),
    or a directory holding any of them (tokenizer.json preferred)."""
    return load_tokenizer(path)


_PUNCTUATION = frozenset('!"#$%&\'()*+,-./:;?@[\\]^_`{|}~')


def _kind_of(tok: Tokenizer) -> str:
  if isinstance(tok.model, models.Unigram):
    return "unigram"
  return "wordpiece" if isinstance(tok.model, models.WordPiece) else "bpe"


def _mark_special(tok: Tokenizer) -> Tokenizer:
  """Registers the role tokens present as special, so text never splits them."""
  present = [n for names in ROLE_TOKENS.values() for n in names if tok.token_to_id(n) is not None]
  if present:
    tok.add_special_tokens(sorted(set(present)))
  return tok


def _lowercase_hint(directory: str) -> bool:
  """`do_lower_case` from a Hugging Face tokenizer_config.json beside a vocab.txt (default True:
  the uncased BERT vocabularies are the common ones)."""
  path = os.path.join(directory, "tokenizer_config.json")
  try:
    with open(path, encoding="utf-8") as f:
      return bool(json.load(f).get("do_lower_case", True))
  except (OSError, ValueError):
    return True


def wordpiece_from_vocab(vocab_file: str, lowercase: bool) -> Tokenizer:
  tok = Tokenizer(models.WordPiece.from_file(vocab_file, unk_token="[UNK]"))
  tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.decoder = decoders.WordPiece()
  return _mark_special(tok)


def bpe_from_files(vocab_json: str, merges_txt: str) -> Tokenizer:
  tok = Tokenizer(models.BPE.from_file(vocab_json, merges_txt))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = processors.ByteLevel(trim_offsets=False)
  return _mark_special(tok)


def load_tokenizer(path: str) -> TextTokenizer:
  path = os.path.expanduser(path)
  if os.path.isdir(path):
    for name in (TOKENIZER_FILE, "vocab.json", "vocab.txt", "spiece.model"):
      if os.path.exists(os.path.join(path, name)):
        return load_tokenizer(os.path.join(path, name))
    raise DataError(f"{path} holds no tokenizer.json, vocab.json (+ merges.txt), vocab.txt or "
                    "spiece.model")
  if not os.path.exists(path):
    raise DataError(f"tokenizer file {path} does not exist")
  name = os.path.basename(path)
  try:
    if name.endswith(".json") and name != "vocab.json":
      tok = Tokenizer.from_file(path)
    elif name == "vocab.json":
      merges = os.path.join(os.path.dirname(path), "merges.txt")
      if not os.path.exists(merges):
        raise DataError(f"{path} is a GPT-2 vocabulary but {merges} is missing")
      tok = bpe_from_files(path, merges)
    elif name.endswith(".txt"):
      tok = wordpiece_from_vocab(path, _lowercase_hint(os.path.dirname(path)))
    elif name.endswith(".model"):
      tok = unigram_from_spiece(path)
    else:
      raise DataError(f"{path}: not a tokenizer.json, vocab.json, vocab.txt or spiece.model")
  except DataError:
    raise
  except Exception as e:  # noqa: BLE001 - tokenizers raises bare Exceptions on bad files
    raise DataError(f"cannot read the tokenizer {path}: {e}") from None
  # Published tokenizer.json files often pad / truncate to a fixed length; the example builders
  # lay out sequences themselves.
  tok.no_padding()
  tok.no_truncation()
  return TextTokenizer(tok, _kind_of(tok), source=path)


def train_tokenizer(texts: Iterable[str], kind: str, vocab_size: int, *,
                    lowercase: bool = True, show_progress: bool = False) -> TextTokenizer:
  """Trains a WordPiece (BERT, ALBERT), byte-level BPE ("bpe" with GPT-2's <|endoftext|>,
  "roberta-bpe" with RoBERTa's <s> <pad> </s> <unk> <mask>) or SentencePiece-style Unigram
  (XLNet, with its special tokens at XLNet's ids) vocabulary on `texts`."""
  if kind == "wordpiece":
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(BERT_SPECIALS),
                                        show_progress=show_progress)
  elif kind in ("bpe", "roberta-bpe"):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = GPT_SPECIALS if kind == "bpe" else ROBERTA_SPECIALS
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=show_progress)
  elif kind == "unigram":
    tok = _sentencepiece_style(Tokenizer(models.Unigram()), lowercase=lowercase,
                               dummy_prefix=True)
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=list(XLNET_SPECIALS),
                                      unk_token="<unk>", show_progress=show_progress)
  else:
    raise DataError(f"tokenizer kind {kind!r} is not one of {', '.join(map(repr, KINDS))}")
  tok.train_from_iterator(texts, trainer=trainer)
  if kind == "wordpiece":
    tok.model = _canonical_wordpiece(tok.get_vocab(with_added_tokens=False))
  return TextTokenizer(tok, _kind_of(tok))


KINDS = ("wordpiece", "bpe", "roberta-bpe", "unigram")


def _sentencepiece_style(tok: Tokenizer, *, lowercase: bool, dummy_prefix: bool,
                         charsmap: bytes = b"") -> Tokenizer:
  """XLNet's text preparation (its tokenizer's preprocess_text: `` and '' become ", accents
  are stripped, optionally lowercased), SentencePiece's normalisation (its precompiled NFKC
  map when there is one) and "▁" word marks."""
  steps = [normalizers.Replace("``", '"'), normalizers.Replace("''", '"'),
           normalizers.NFKD(), normalizers.StripAccents()]
  if lowercase:
    steps.append(normalizers.Lowercase())
  steps.append(normalizers.Precompiled(charsmap) if charsmap else normalizers.NFKC())
  steps.append(normalizers.Replace(Regex(" {2,}"), " "))
  tok.normalizer = normalizers.Sequence(steps)
  scheme = "always" if dummy_prefix else "never"
  tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme=scheme)
  tok.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme=scheme)
  return tok


def _protobuf_fields(data: bytes):
  """(field number, value) of a serialised protobuf message: ints for varints, bytes for
  length-delimited fields, 4 bytes for fixed32 (enough to read a SentencePiece model without
  the protobuf package or its generated code)."""
  i = 0

  def varint():
    nonlocal i
    shift = value = 0
    while True:
      byte = data[i]
      i += 1
      value |= (byte & 0x7F) << shift
      shift += 7
      if not byte & 0x80:
        return value

  while i < len(data):
    key = varint()
    number, wire = key >> 3, key & 7
    if wire == 0:
      yield number, varint()
    elif wire == 2:
      n = varint()
      yield number, data[i:i + n]
      i += n
    elif wire == 5:
      yield number, data[i:i + 4]
      i += 4
    elif wire == 1:
      yield number, data[i:i + 8]
      i += 8
    else:
      raise ValueError(f"unsupported protobuf wire type {wire}")


def unigram_from_spiece(path: str) -> Tokenizer:
  """A SentencePiece Unigram model (XLNet's spiece.model) as a `tokenizers` Unigram with the
  same pieces, scores and normalisation; its control and user-defined pieces (<cls>, <sep>,
  <mask>, ...) are special tokens."""
  with open(path, "rb") as f:
    data = f.read()
  pieces, specials, unk, charsmap, dummy_prefix, model_type = [], [], 0, b"", True, 1
  for number, value in _protobuf_fields(data):
    if number == 1:                                   # SentencePiece piece
      piece, score, kind = "", 0.0, 1
      for n, v in _protobuf_fields(value):
        if n == 1:
          piece = v.decode("utf-8")
        elif n == 2:
          score = float(np.frombuffer(v, "<f4")[0])
        elif n == 3:
          kind = v
      if kind == 2:
        unk = len(pieces)
      if kind in (2, 3, 4):
        specials.append(piece)
      pieces.append((piece, score))
    elif number == 2:                                 # TrainerSpec
      model_type = dict(_protobuf_fields(value)).get(3, 1)
    elif number == 3:                                 # NormalizerSpec
      spec = dict(_protobuf_fields(value))
      charsmap, dummy_prefix = spec.get(2, b""), bool(spec.get(3, 1))
  if model_type != 1 or not pieces:
    raise DataError(f"{path} is not a SentencePiece Unigram model (model_type={model_type}, "
                    f"{len(pieces)} pieces)")
  tok = _sentencepiece_style(Tokenizer(models.Unigram(pieces, unk_id=unk, byte_fallback=False)),
                             lowercase=False, dummy_prefix=dummy_prefix, charsmap=charsmap)
  tok.add_special_tokens(specials)
  return tok


def _canonical_wordpiece(vocab: dict[str, int]) -> models.WordPiece:
  """The trainer assigns ids in hash-map order, different on every run; WordPiece matching does
  not depend on ids, so renumbering (specials first, then sorted) makes ids reproducible."""
  rest = sorted(t for t in vocab if t not in BERT_SPECIALS)
  ordered = {t: i for i, t in enumerate([*BERT_SPECIALS, *rest])}
  return models.WordPiece(ordered, unk_token="[UNK]", continuing_subword_prefix="##")
