"""Tokenizers (Hugging Face `tokenizers`): WordPiece for BERT, byte-level BPE for GPT.

Special tokens are looked up by name in the vocabulary, never assumed to sit at fixed ids. The
tokenizer is saved as `tokenizer.json` in the workdir beside the checkpoints, so a restored run
needs nothing else.
"""

import dataclasses
import os
from typing import Iterable

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from plm_jax.errors import DataError

TOKENIZER_FILE = "tokenizer.json"
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
GPT_SPECIALS = ("<|endoftext|>",)


@dataclasses.dataclass
class TextTokenizer:
  """A `tokenizers.Tokenizer` plus the ids of the special tokens its family needs."""

  tokenizer: Tokenizer
  kind: str                              # "wordpiece" or "bpe"

  def __post_init__(self):
    required = BERT_SPECIALS if self.kind == "wordpiece" else GPT_SPECIALS
    missing = [t for t in required if self.tokenizer.token_to_id(t) is None]
    if missing:
      raise DataError(f"the {self.kind} vocabulary lacks the special token(s) {missing}; "
                      "retrain it or add them")

  # --- special ids -------------------------------------------------------------------------
  def id_of(self, token: str) -> int:
    return self.tokenizer.token_to_id(token)

  @property
  def pad_id(self) -> int:
    return self.id_of("[PAD]") if self.kind == "wordpiece" else self.id_of("<|endoftext|>")

  @property
  def cls_id(self) -> int:
    return self.id_of("[CLS]")

  @property
  def sep_id(self) -> int:
    return self.id_of("[SEP]")

  @property
  def mask_id(self) -> int:
    return self.id_of("[MASK]")

  @property
  def eos_id(self) -> int:
    return self.id_of("<|endoftext|>")

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def special_ids(self) -> np.ndarray:
    names = BERT_SPECIALS if self.kind == "wordpiece" else GPT_SPECIALS
    added = [t.content for t in self.tokenizer.get_added_tokens_decoder().values() if t.special]
    return np.array(sorted({self.id_of(t) for t in (*names, *added)}), np.int32)

  def regular_ids(self) -> np.ndarray:
    """Every id that is not a special token (what MLM's "random token" is drawn from)."""
    return np.setdiff1d(np.arange(self.vocab_size, dtype=np.int32), self.special_ids())

  # --- text ---------------------------------------------------------------------------------
  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    """Ids without any special tokens (the example builders add them)."""
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
  def load(cls, directory: str) -> "TextTokenizer":
    path = os.path.join(directory, TOKENIZER_FILE)
    if not os.path.exists(path):
      raise DataError(f"{path} does not exist; train a tokenizer or point at its directory")
    try:
      tok = Tokenizer.from_file(path)
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception on bad files
      raise DataError(f"cannot read the tokenizer {path}: {e}") from None
    kind = "wordpiece" if isinstance(tok.model, models.WordPiece) else "bpe"
    return cls(tok, kind)


def train_tokenizer(texts: Iterable[str], kind: str, vocab_size: int, *,
                    lowercase: bool = True) -> TextTokenizer:
  """Trains a WordPiece (BERT) or byte-level BPE (GPT-2) vocabulary on `texts`."""
  if kind == "wordpiece":
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(BERT_SPECIALS),
                                        show_progress=False)
  elif kind == "bpe":
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(GPT_SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
  else:
    raise DataError(f"tokenizer kind {kind!r} is not one of 'wordpiece', 'bpe'")
  tok.train_from_iterator(texts, trainer=trainer)
  if kind == "wordpiece":
    tok.model = _canonical_wordpiece(tok.get_vocab(with_added_tokens=False))
  return TextTokenizer(tok, kind)


def _canonical_wordpiece(vocab: dict[str, int]) -> models.WordPiece:
  """The trainer assigns ids in hash-map order, different on every run; WordPiece matching does
  not depend on ids, so renumbering (specials first, then sorted) makes training reproducible."""
  rest = sorted(t for t in vocab if t not in BERT_SPECIALS)
  ordered = {t: i for i, t in enumerate([*BERT_SPECIALS, *rest])}
  return models.WordPiece(ordered, unk_token="[UNK]", continuing_subword_prefix="##")
