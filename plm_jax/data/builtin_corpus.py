"""The built-in default corpus: English prose from the Python standard library's docstrings.

It needs no download and is the same on every machine: the text was extracted once (by
`generate()`, from CPython 3.11's docstrings) and ships with the package as
`builtin/pydoc_corpus.txt.gz`, in the usual pretraining format: one sentence per line, a blank
line between documents (one document per docstring). About 1 MB of text: enough for a tiny model
to learn something real on a CPU in a few minutes.
"""

import gzip
import importlib
import inspect
import io
import re
import sys
from pathlib import Path

CORPUS_PATH = Path(__file__).parent / "builtin" / "pydoc_corpus.txt.gz"

# Modules whose import has side effects (opens a browser, prints, needs a display) or is test-only.
_SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "lib2to3",
         "ensurepip", "venv", "pydoc_data", "test", "unittest", "xxsubtype", "msvcrt", "winreg",
         "winsound", "_msi", "msilib", "nturl2path"}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")


def _prose_paragraphs(doc: str) -> list[str]:
  """Keeps prose: drops doctest examples, indented code and short headings."""
  paragraphs = []
  for block in re.split(r"\n\s*\n", doc):
    lines = [ln for ln in block.splitlines()
             if ln.strip() and not ln.startswith((" ", "\t", ">>>", "..."))]
    text = " ".join(ln.strip() for ln in lines)
    if len(text) >= 40 and re.search(r"[a-z]{3,} [a-z]{2,} [a-z]{2,}", text):
      paragraphs.append(text)
  return paragraphs


def _documents_of(module) -> list[list[str]]:
  objects = [module]
  for name, value in sorted(vars(module).items()):
    if name.startswith("_") or getattr(value, "__module__", None) != module.__name__:
      continue
    if inspect.isclass(value):
      objects.append(value)
      objects.extend(v for k, v in sorted(vars(value).items())
                     if not k.startswith("_") and inspect.isfunction(v))
    elif inspect.isfunction(value):
      objects.append(value)
  documents = []
  for obj in objects:
    doc = inspect.getdoc(obj)
    if not doc:
      continue
    sentences = [s.strip() for p in _prose_paragraphs(doc) for s in _SENTENCE_END.split(p)]
    sentences = [s for s in sentences if len(s.split()) >= 3]
    if sentences:
      documents.append(sentences)
  return documents


def generate(out: Path = CORPUS_PATH) -> tuple[int, int]:
  """Re-extracts the corpus from the running Python's standard library; returns (docs, bytes)."""
  documents = []
  for name in sorted(sys.stdlib_module_names):
    if name.startswith("_") or name in _SKIP:
      continue
    try:
      module = importlib.import_module(name)
    except Exception:  # noqa: BLE001 - platform-specific modules simply do not contribute
      continue
    documents.extend(_documents_of(module))
  text = "\n\n".join("\n".join(doc) for doc in documents) + "\n"
  out.parent.mkdir(parents=True, exist_ok=True)
  with gzip.GzipFile(out, "wb", mtime=0) as f:
    f.write(text.encode("utf-8"))
  return len(documents), len(text.encode("utf-8"))


def read_builtin_text() -> str:
  with gzip.open(CORPUS_PATH, "rb") as f:
    return io.TextIOWrapper(f, encoding="utf-8").read()


if __name__ == "__main__":
  print("documents=%d bytes=%d" % generate())
