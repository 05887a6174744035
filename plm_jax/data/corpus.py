"""Text sources -> documents (each a list of sentences).

Format of local corpora (the original BERT convention): plain-text files, documents separated
by blank lines; within a document each line holds one or more sentences. The data issue adds more
sources (TFDS, JSON lines, mixtures) behind the same `load_documents` entry point.
"""

import glob
import os
import re

from plm_jax.data.builtin_corpus import read_builtin_text
from plm_jax.errors import DataError

Document = list[str]
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")


def parse_documents(text: str) -> list[Document]:
  """Splits text into documents at blank lines and each document into sentences."""
  documents = []
  for block in re.split(r"\n[ \t]*\n", text):
    sentences = [s.strip() for line in block.splitlines() for s in _SENTENCE_END.split(line)]
    sentences = [s for s in sentences if s]
    if sentences:
      documents.append(sentences)
  return documents


def read_text_files(pattern: str) -> list[Document]:
  """Reads every file matching `pattern` (a glob), in sorted order."""
  paths = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True)
                 if os.path.isfile(p))
  if not paths:
    raise DataError(f"data.path={pattern!r} matches no files; give a glob of plain-text files "
                    "(documents separated by blank lines), or --config.data.source=builtin")
  documents = []
  for path in paths:
    with open(path, "rb") as f:
      raw = f.read()
    # Undecodable bytes become U+FFFD rather than aborting a long preparation.
    documents.extend(parse_documents(raw.decode("utf-8", errors="replace")))
  if not documents:
    raise DataError(f"data.path={pattern!r} matches {len(paths)} file(s) but they hold no text; "
                    "point it at a non-empty corpus")
  return documents


def load_documents(data_cfg) -> list[Document]:
  """The documents named by `config.data` (source "builtin" or "text")."""
  if data_cfg.source == "builtin":
    return parse_documents(read_builtin_text())
  if data_cfg.source == "text":
    if not data_cfg.path:
      raise DataError("data.source='text' needs data.path, e.g. "
                      "--config.data.path='corpus/*.txt'")
    return read_text_files(data_cfg.path)
  raise DataError(f"data.source={data_cfg.source!r} is not one of 'builtin', 'text'")


def split_train_eval(documents: list[Document], eval_fraction: float,
                     ) -> tuple[list[Document], list[Document]]:
  """Holds out every k-th document for evaluation (deterministic, spread over the corpus)."""
  if eval_fraction <= 0 or len(documents) < 4:
    return documents, documents[: max(1, len(documents) // 4)]
  every = max(2, round(1 / eval_fraction))
  train = [d for i, d in enumerate(documents) if i % every != every - 1]
  held = [d for i, d in enumerate(documents) if i % every == every - 1]
  return train, held
