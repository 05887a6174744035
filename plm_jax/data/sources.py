"""Text sources -> documents (each a list of sentences), with counts of what was skipped.

Kinds of source (`config.data.source`):
  builtin  the corpus that ships with plm-jax (no download)
  text     plain-text files (`data.path`, a glob; `.gz` read transparently): documents separated
           by blank lines, or one document per file with `data.doc_per_file`
  jsonl    JSON lines (`data.path`), the text in `data.text_field`
  tfds     a TensorFlow Datasets dataset (`data.tfds_name`, `data.tfds_split`, with slicing such
           as "train[:10%]", `data.tfds_data_dir`), the text in `data.text_field`, read with
           `tfds.data_source` (random access, no TensorFlow needed)
  mixture  several of the above with weights, `data.mixture`:
           "text:corpus/*.txt=0.7; jsonl:web/*.jsonl.gz=0.2; tfds:wikipedia/20230601.en@train=0.1"

Bad records never stop a run: empty documents, undecodable bytes (replaced by U+FFFD), bad
JSON lines and records without the text field are skipped or repaired and counted in
`SourceStats`, which `plm-jax data prepare` and `plm-jax train` print.
"""

import dataclasses
import glob
import gzip
import importlib
import io
import json
import os
import re
from typing import Iterator

from plm_jax.data.builtin_corpus import read_builtin_text
from plm_jax.errors import DataError

Document = list[str]
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")
KINDS = ("builtin", "text", "jsonl", "tfds")


@dataclasses.dataclass
class SourceSpec:
  kind: str
  target: str = ""          # glob (text/jsonl) or dataset name (tfds)
  split: str = "train"      # tfds split, with slicing
  weight: float = 1.0

  def describe(self) -> str:
    if self.kind == "builtin":
      return "builtin"
    return f"{self.kind}:{self.target}" + (f"@{self.split}" if self.kind == "tfds" else "")


@dataclasses.dataclass
class SourceStats:
  """What reading a source met; printed as the data summary."""
  files: int = 0
  bytes: int = 0
  documents: int = 0
  empty_documents: int = 0
  undecodable_documents: int = 0
  bad_records: int = 0
  bad_record_examples: list = dataclasses.field(default_factory=list)

  def bad(self, where: str) -> None:
    self.bad_records += 1
    if len(self.bad_record_examples) < 5:
      self.bad_record_examples.append(where)

  def merge(self, other: "SourceStats") -> None:
    for f in dataclasses.fields(self):
      if f.name == "bad_record_examples":
        self.bad_record_examples = (self.bad_record_examples + other.bad_record_examples)[:5]
      else:
        setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def split_sentences(text: str) -> Document:
  """One document's text -> sentences (each line holds one or more)."""
  sentences = [s.strip() for line in text.splitlines() for s in _SENTENCE_END.split(line)]
  return [s for s in sentences if s]


def parse_documents(text: str) -> list[Document]:
  """Splits text into documents at blank lines and each document into sentences."""
  return [d for d in (split_sentences(block) for block in re.split(r"\n[ \t]*\n", text)) if d]


def specs_from_config(data_cfg) -> list[SourceSpec]:
  """The sources `config.data` names (one, or the components of a mixture)."""
  kind = data_cfg.source
  if kind == "mixture":
    specs = [_parse_component(c) for c in data_cfg.mixture.split(";") if c.strip()]
    if not specs:
      raise DataError("data.source='mixture' needs data.mixture, e.g. "
                      "--config.data.mixture='text:a/*.txt=0.7;jsonl:b/*.jsonl=0.3'")
    return specs
  if kind not in KINDS:
    raise DataError(f"data.source={kind!r} is not one of {', '.join(KINDS + ('mixture',))}")
  if kind in ("text", "jsonl") and not data_cfg.path:
    raise DataError(f"data.source={kind!r} needs data.path, e.g. --config.data.path='corpus/*."
                    f"{'txt' if kind == 'text' else 'jsonl'}'")
  if kind == "tfds" and not data_cfg.tfds_name:
    raise DataError("data.source='tfds' needs data.tfds_name, e.g. "
                    "--config.data.tfds_name=wikipedia/20230601.en")
  target = data_cfg.tfds_name if kind == "tfds" else data_cfg.path
  return [SourceSpec(kind, target, data_cfg.tfds_split)]


def _parse_component(text: str) -> SourceSpec:
  """'kind:target[@split]=weight' -> SourceSpec."""
  body, _, weight = text.strip().rpartition("=")
  kind, _, target = body.partition(":")
  kind = kind.strip()
  try:
    w = float(weight)
  except ValueError:
    w = -1.0
  if not body or kind not in KINDS or w <= 0:
    raise DataError(f"data.mixture component {text.strip()!r} is not KIND:TARGET=WEIGHT with KIND "
                    f"in {KINDS} and a positive weight, e.g. 'text:corpus/*.txt=0.7'")
  split = "train"
  if kind == "tfds" and "@" in target:
    target, split = target.split("@", 1)
  return SourceSpec(kind, target.strip(), split.strip(), w)


def expand_glob(pattern: str) -> list[str]:
  paths = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True)
                 if os.path.isfile(p))
  if not paths:
    raise DataError(f"the glob {pattern!r} matches no files; check data.path (or the "
                    "data.mixture component)")
  return paths


def _read_text_file(path: str, stats: SourceStats) -> str:
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError) as e:
    raise DataError(f"cannot read {path}: {e}") from None
  stats.files += 1
  stats.bytes += len(raw)
  text = raw.decode("utf-8", errors="replace")
  return text


def _documents(texts: Iterator[tuple[str, str]], stats: SourceStats,
               blank_line_separated: bool) -> Iterator[Document]:
  for where, text in texts:
    pieces = re.split(r"\n[ \t]*\n", text) if blank_line_separated else [text]
    for piece in pieces:
      doc = split_sentences(piece)
      if not doc:
        if not blank_line_separated:   # blank-line runs are separators, not documents
          stats.empty_documents += 1
        continue
      if "\ufffd" in piece:
        stats.undecodable_documents += 1
      stats.documents += 1
      yield doc


def _text_records(spec: SourceSpec, stats: SourceStats) -> Iterator[tuple[str, str]]:
  for path in expand_glob(spec.target):
    text = _read_text_file(path, stats)
    if not text.strip():
      stats.empty_documents += 1
      continue
    yield path, text


def _jsonl_records(spec: SourceSpec, field: str, stats: SourceStats
                   ) -> Iterator[tuple[str, str]]:
  for path in expand_glob(spec.target):
    text = _read_text_file(path, stats)
    for number, line in enumerate(io.StringIO(text), 1):
      if not line.strip():
        continue
      try:
        value = json.loads(line)[field]
        if not isinstance(value, str):
          raise TypeError(type(value).__name__)
      except (ValueError, KeyError, TypeError, IndexError):
        stats.bad(f"{path}:{number}")
        continue
      yield f"{path}:{number}", value


def open_tfds(name: str, split: str, data_dir: str = "", register: tuple[str, ...] = ()):
  """A TFDS dataset's split for random access (`tfds.data_source`: ArrayRecord, no TensorFlow),
  or a DataError with the `tfds build` command that prepares it. `register`: tfds modules to
  import first (GLUE's, CoNLL's, WMT's builders live in packages `import tfds` leaves out)."""
  try:
    import tensorflow_datasets as tfds  # lazy: only runs that read TFDS need it
  except ImportError:
    raise DataError(f"TFDS dataset {name!r} needs tensorflow-datasets: pip install "
                    "'plm-jax[tfds]'") from None
  for module in register:
    try:
      importlib.import_module(module)
    except ImportError:
      pass                             # not in this tfds version: data_source names the problem
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
  except Exception as e:  # noqa: BLE001 - tfds raises many kinds; all mean "not usable as is"
    where = f" --data_dir={data_dir}" if data_dir else ""
    reason = " ".join(str(e).split()).split(". ")[0][:200]
    raise DataError(
        f"TFDS dataset {name!r} (split {split!r}) cannot be read ({reason}); prepare it first, "
        f"in ArrayRecord format: tfds build {name}{where} --file_format=array_record") from None


def _tfds_records(spec: SourceSpec, field: str, data_dir: str, stats: SourceStats
                  ) -> Iterator[tuple[str, str]]:
  source = open_tfds(spec.target, spec.split, data_dir)
  for i in range(len(source)):
    record = source[i]
    value = record.get(field) if isinstance(record, dict) else None
    if isinstance(value, bytes):
      value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
      stats.bad(f"{spec.target}[{spec.split}] record {i}: no text field {field!r}")
      continue
    stats.bytes += len(value.encode("utf-8"))
    yield f"{spec.target}[{i}]", value


def read_documents(spec: SourceSpec, data_cfg, stats: SourceStats) -> Iterator[Document]:
  """The documents of one source, streamed."""
  if spec.kind == "builtin":
    text = read_builtin_text()
    stats.files += 1
    stats.bytes += len(text.encode("utf-8"))
    yield from _documents(iter([("builtin", text)]), stats, blank_line_separated=True)
  elif spec.kind == "text":
    yield from _documents(_text_records(spec, stats), stats,
                          blank_line_separated=not data_cfg.doc_per_file)
  elif spec.kind == "jsonl":
    yield from _documents(_jsonl_records(spec, data_cfg.text_field, stats), stats, False)
  elif spec.kind == "tfds":
    yield from _documents(_tfds_records(spec, data_cfg.text_field, data_cfg.tfds_data_dir,
                                        stats), stats, False)


def load_documents(spec: SourceSpec, data_cfg, stats: SourceStats | None = None
                   ) -> list[Document]:
  """All documents of one source in memory; an error if there are none."""
  stats = SourceStats() if stats is None else stats
  documents = list(read_documents(spec, data_cfg, stats))
  if not documents:
    raise DataError(f"the source {spec.describe()} holds no text ({stats.files} file(s), "
                    f"{stats.bad_records} bad record(s)); point it at a non-empty corpus")
  return documents
