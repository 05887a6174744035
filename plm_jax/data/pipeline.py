"""Documents -> tokenised examples, in memory or prepared once on disk.

Both paths run the same code: sources are streamed in chunks of `data.chunk_documents`
documents; each chunk is split into train / eval documents (every k-th document held out),
tokenised (HF tokenizers' batch encoding, on all cores) and turned into fixed-shape example
arrays by the configured builder. `plm-jax data prepare` writes each chunk as a shard of `.npy`
files (memory-mapped on load: random access, each host reads only the rows it serves); small
corpora are simply kept in memory by `plm-jax train`.

Builders (`data.builder`): "nsp" (BERT pairs + NSP labels), "sop" (ALBERT pairs, swapped in
half the examples, + SOP labels), "full_sentences" (RoBERTa-style MLM-only packing), "blocks"
(GPT: fixed blocks of the joined stream), "packed" (GPT: whole documents packed with segment ids
and position resets), "plm" (XLNet: chains of consecutive segments, reused part + A + B).
"""

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time

import numpy as np
import tokenizers

from plm_jax import families
from plm_jax.data import compact
from plm_jax.data import examples as ex
from plm_jax.data import sources
from plm_jax.data.tokenizer import LM_ROLES, MLM_ROLES, TOKENIZER_FILE, TextTokenizer, \
    load_tokenizer, train_tokenizer
from plm_jax.errors import ConfigError, DataError

# builder: (the objective its examples train, tokenised by sentence?). A family trains the
# objectives its registry entry lists, so it takes the builders of those objectives.
BUILDERS = {
    "nsp": ("mlm_nsp", True),
    "sop": ("mlm_sop", True),
    "full_sentences": ("mlm", True),
    "blocks": ("causal_lm", False),
    "packed": ("causal_lm", False),
    "plm": ("plm", True),
}
META_FILE = "meta.json"
FORMAT_VERSION = 2            # 2: compact shards (plm_jax/data/compact.py); 1 read as well


@dataclasses.dataclass
class BuildStats(sources.SourceStats):
  """Source counts plus what building met."""
  sentences: int = 0
  tokens: int = 0
  examples: int = 0
  eval_examples: int = 0
  one_sentence_documents: int = 0
  long_sentences: int = 0          # sentences longer than a whole sequence (cut or truncated)
  tokenize_seconds: float = 0.0    # time in the tokenizer alone
  seconds: float = 0.0             # reading + tokenising + building

  def summary(self) -> dict:
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    out["mb_per_s"] = round(self.bytes / 1e6 / self.seconds, 2) if self.seconds else None
    out["tokenize_mb_per_s"] = (round(self.bytes / 1e6 / self.tokenize_seconds, 2)
                                if self.tokenize_seconds else None)
    out["seconds"] = round(self.seconds, 2)
    out["tokenize_seconds"] = round(self.tokenize_seconds, 2)
    return out


def check_builder(config) -> str:
  builder = config.data.builder
  if builder not in BUILDERS:
    raise DataError(f"data.builder={builder!r} is not one of {sorted(BUILDERS)}")
  objective = BUILDERS[builder][0]
  if config.objective.name != objective:
    fits = [b for b, (o, _) in BUILDERS.items() if o == config.objective.name]
    raise DataError(f"data.builder={builder!r} builds {objective} examples, not "
                    f"{config.objective.name} examples; use "
                    f"--config.data.builder={fits[0] if fits else '...'}")
  return builder


def required_roles(builder: str) -> tuple[str, ...]:
  return MLM_ROLES if BUILDERS[builder][1] else LM_ROLES


def tokenizer_for(config, sample_documents, log=None) -> TextTokenizer:
  """data.tokenizer if given, else a vocabulary trained on `sample_documents` (or the one
  trained on the same documents before: see `cached_training`); `log(line)` hears which."""
  builder = check_builder(config)
  if config.data.tokenizer:
    tok = load_tokenizer(config.data.tokenizer)
  else:
    kind = families.get(config.model.family).tokenizer_kind
    tok = cached_training(sample_documents, kind, config.data.vocab_size, config.data.lowercase,
                          log=log)
    if tok.vocab_size > config.data.vocab_size:
      # the trainer never goes below the corpus' alphabet and the special tokens
      raise ConfigError(f"data.vocab_size={config.data.vocab_size} is below the "
                        f"{tok.vocab_size:,} entries a {kind} vocabulary of this corpus needs "
                        "(its alphabet and special tokens); use --config.data.vocab_size="
                        f"{tok.vocab_size} or more")
  tok.require(required_roles(builder))
  return tok


def cache_dir() -> str:
  """$PLM_JAX_CACHE, else $XDG_CACHE_HOME/plm-jax, else ~/.cache/plm-jax."""
  return os.environ.get("PLM_JAX_CACHE") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
      "plm-jax")


def cached_training(documents, kind: str, vocab_size: int, lowercase: bool,
                    log=None) -> TextTokenizer:
  """A vocabulary trained on `documents`, reused when the same documents and settings come
  again. HF tokenizers breaks ties between equally frequent merges in hash-map order, which
  changes from process to process: two trainings on one corpus differ in a few rare tokens, and
  so would two runs with the same seed. Keyed by the documents' text and the settings, the
  first vocabulary trained is the one every later run on this machine gets (to reproduce a run
  elsewhere, give its tokenizer.json as data.tokenizer). `log(line)`, if given, hears whether
  it was trained (and how long it took) or found."""
  log = log or (lambda line: None)
  key = hashlib.sha256(json.dumps([kind, vocab_size, lowercase,
                                   tokenizers.__version__]).encode("utf-8"))
  for document in documents:
    for sentence in document:
      key.update(sentence.encode("utf-8", errors="replace") + b"\n")
    key.update(b"\x00")
  path = os.path.join(cache_dir(), "tokenizers", f"{kind}-{vocab_size}-{key.hexdigest()[:24]}")
  if os.path.exists(os.path.join(path, TOKENIZER_FILE)):
    try:
      tok = load_tokenizer(path)
      log(f"tokenizer: the {kind} vocabulary of {tok.vocab_size:,} trained before on the "
              f"same documents ({path})")
      return tok
    except DataError:
      pass                                 # a damaged cache entry is trained again
  t0 = time.time()
  tok = train_tokenizer((s for d in documents for s in d), kind, vocab_size, lowercase=lowercase)
  log(f"tokenizer: trained a {kind} vocabulary of {tok.vocab_size:,} on {len(documents):,} "
      f"documents in {time.time() - t0:.1f}s")
  tmp = None
  try:
    tmp = tempfile.mkdtemp(prefix=".partial-", dir=_made(os.path.dirname(path)))
    tok.save(tmp)
    os.replace(tmp, path)                  # complete or absent, even with concurrent runs
  except OSError:                          # no writable cache, or another run got there first
    if tmp is not None:
      shutil.rmtree(tmp, ignore_errors=True)
    if os.path.exists(os.path.join(path, TOKENIZER_FILE)):
      return load_tokenizer(path)          # theirs, so that both runs use one vocabulary
  return tok


def _made(directory: str) -> str:
  os.makedirs(directory, exist_ok=True)
  return directory


def build_examples(documents, tokenizer: TextTokenizer, config, builder: str,
                   rng: np.random.Generator, stats: BuildStats) -> dict[str, np.ndarray]:
  """One chunk of documents -> example arrays."""
  seq = config.data.max_seq_length
  by_sentence = BUILDERS[builder][1]
  if by_sentence:
    flat = [s for d in documents for s in d]
    t0 = time.perf_counter()
    ids = tokenizer.encode_batch(flat)
    stats.tokenize_seconds += time.perf_counter() - t0
    docs, k = [], 0
    for d in documents:
      sentence_ids = [s for s in ids[k:k + len(d)] if s]
      k += len(d)
      if sentence_ids:
        docs.append(sentence_ids)
        stats.one_sentence_documents += len(sentence_ids) == 1
    stats.sentences += len(flat)
    stats.tokens += sum(len(s) for s in ids)
    stats.long_sentences += sum(len(s) > seq - 3 for s in ids)
  else:
    t0 = time.perf_counter()
    docs = tokenizer.encode_batch([" ".join(d) for d in documents])
    stats.tokenize_seconds += time.perf_counter() - t0
    stats.tokens += sum(len(d) for d in docs)
  if builder in ("nsp", "sop"):
    return ex.bert_examples(docs, max_seq_length=seq, short_seq_prob=config.data.short_seq_prob,
                            dupe_factor=config.data.dupe_factor, cls_id=tokenizer.cls_id,
                            sep_id=tokenizer.sep_id, pad_id=tokenizer.pad_id, rng=rng,
                            sentence_order=builder == "sop")
  if builder == "plm":
    return ex.xlnet_examples(docs, max_seq_length=seq, reuse_len=config.objective.reuse_len,
                             segments=config.objective.plm_segments, sep_id=tokenizer.sep_id,
                             cls_id=tokenizer.cls_id, rng=rng)
  if builder == "full_sentences":
    return ex.full_sentence_examples(docs, max_seq_length=seq, cls_id=tokenizer.cls_id,
                                     sep_id=tokenizer.sep_id, pad_id=tokenizer.pad_id)
  if builder == "blocks":
    return ex.gpt_examples(docs, max_seq_length=seq, eos_id=tokenizer.eos_id)
  return ex.gpt_packed_examples(docs, max_seq_length=seq, eos_id=tokenizer.eos_id)


def _chunks(iterable, size: int):
  chunk = []
  for item in iterable:
    chunk.append(item)
    if len(chunk) >= size:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  parts = [p for p in parts if len(next(iter(p.values())))]
  if not parts:
    return {}
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@dataclasses.dataclass
class PreparedData:
  """Example arrays: per train source (with its mixture weight) and one eval set."""
  tokenizer: TextTokenizer
  builder: str
  train: list[dict[str, np.ndarray]]      # one dict per source (lists of shards are joined)
  weights: list[float]
  eval: dict[str, np.ndarray]
  stats: BuildStats
  descriptions: list[str]



def _process(config, tokenizer, builder, specs, sink,
             splits: tuple[str, ...] = ("train", "eval")) -> BuildStats:
  """Streams every source chunk by chunk into `sink(source_index, split, chunk_index, arrays)`;
  the documents of a split not in `splits` are read but not tokenised (each split's examples
  are the same whichever others are built)."""
  stats = BuildStats()
  t0 = time.perf_counter()
  every = max(2, round(1 / config.data.eval_fraction)) if config.data.eval_fraction > 0 else 0
  for s, spec in enumerate(specs):
    seen = 0
    for c, chunk in enumerate(_chunks(sources.read_documents(spec, config.data, stats),
                                      config.data.chunk_documents)):
      index = np.arange(seen, seen + len(chunk))
      seen += len(chunk)
      held = (index % every == every - 1) if every else np.zeros(len(chunk), bool)
      for split, keep in (("train", ~held), ("eval", held)):
        docs = [d for d, k in zip(chunk, keep) if k]
        if not docs or split not in splits:
          continue
        rng = np.random.default_rng([config.train.seed, s, c, split == "eval"])
        arrays = build_examples(docs, tokenizer, config, builder, rng, stats)
        if len(next(iter(arrays.values()), [])):
          sink(s, split, c, arrays)
          if split == "train":
            stats.examples += len(next(iter(arrays.values())))
          else:
            stats.eval_examples += len(next(iter(arrays.values())))
    if seen == 0:
      raise DataError(f"the source {spec.describe()} holds no text ({stats.files} file(s) read, "
                      f"{stats.bad_records} bad record(s)); point it at a non-empty corpus")
  stats.seconds = time.perf_counter() - t0
  return stats


def _sample_documents(config, specs, limit: int):
  """The first documents of the sources, for training a tokenizer."""
  out = []
  for spec in specs:
    for doc in sources.read_documents(spec, config.data, sources.SourceStats()):
      out.append(doc)
      if len(out) >= limit:
        return out
  return out


def corpus_tokenizer(config, log=None) -> TextTokenizer:
  """data.tokenizer, or a vocabulary trained on the first documents of the sources."""
  specs = sources.specs_from_config(config.data)
  return tokenizer_for(config, _sample_documents(config, specs,
                                                 config.data.tokenizer_sample_documents), log)


def prepare_in_memory(config, tokenizer: TextTokenizer | None = None, *,
                      eval_only: bool = False) -> PreparedData:
  """Reads, tokenises and builds everything now (small corpora; `plm-jax train`); with
  `eval_only`, the held-out documents only (evaluating a checkpoint: no train examples)."""
  builder = check_builder(config)
  specs = sources.specs_from_config(config.data)
  if tokenizer is None:
    tokenizer = corpus_tokenizer(config)
  tokenizer.require(required_roles(builder))
  parts: dict = {}
  stats = _process(config, tokenizer, builder, specs,
                   lambda s, split, c, a: parts.setdefault((s, split), []).append(a),
                   splits=("eval",) if eval_only else ("train", "eval"))
  evaluation = _concat([a for (s, split), v in sorted(parts.items()) if split == "eval" for a in v])
  if eval_only and evaluation:
    return PreparedData(tokenizer, builder, [{} for _ in specs], [s.weight for s in specs],
                        evaluation, stats, [s.describe() for s in specs])
  if eval_only:            # nothing held out: the eval rows are train rows, built below
    return prepare_in_memory(config, tokenizer)
  train = [_concat(parts.get((s, "train"), [])) for s in range(len(specs))]
  _check_not_empty(config, specs, train)
  if not evaluation:       # too few documents to hold any out: evaluate on the first train rows
    evaluation = {k: v[:config.train.batch_size] for k, v in train[0].items()}
  return PreparedData(tokenizer, builder, train, [s.weight for s in specs], evaluation, stats,
                      [s.describe() for s in specs])


def _check_not_empty(config, specs, train) -> None:
  for spec, arrays in zip(specs, train):
    if not arrays:
      raise DataError(
          f"the source {spec.describe()} yields no {config.data.builder} examples of "
          f"max_seq_length={config.data.max_seq_length}; use a larger corpus or a smaller "
          "--config.data.max_seq_length")


# --- on disk -------------------------------------------------------------------------------------

def prepare_to_disk(config, out_dir: str, log=print) -> dict:
  """`plm-jax data prepare`: tokenises once into shards of .npy files plus meta.json."""
  builder = check_builder(config)
  specs = sources.specs_from_config(config.data)
  if os.path.exists(os.path.join(out_dir, META_FILE)):
    raise DataError(f"{out_dir} already holds prepared data; choose another --out or delete it")
  t0 = time.perf_counter()
  tokenizer = tokenizer_for(config, _sample_documents(config, specs,
                                                      config.data.tokenizer_sample_documents),
                            log)
  log(f"tokenizer: {tokenizer.kind}, {tokenizer.vocab_size:,} entries "
      f"({time.perf_counter() - t0:.1f}s)")
  tmp = out_dir.rstrip("/") + ".partial"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  tokenizer.save(tmp)
  shards: list[dict] = []

  sizes = {"stored": 0, "built": 0}

  def sink(s, split, c, arrays):
    name = f"{split}-s{s:02d}-c{c:05d}"
    stored, encoding = compact.encode(arrays)
    for field, values in stored.items():
      np.save(os.path.join(tmp, f"{name}.{field}.npy"), values)
    sizes["stored"] += sum(v.nbytes for v in stored.values())
    sizes["built"] += sum(v.nbytes for v in arrays.values())
    rows = len(next(iter(arrays.values())))
    shards.append({"name": name, "source": s, "split": split, "rows": rows,
                   "encoding": encoding})
    log(f"  wrote {name}: {rows:,} examples")

  stats = _process(config, tokenizer, builder, specs, sink)
  for s, spec in enumerate(specs):
    if not any(sh["source"] == s and sh["split"] == "train" for sh in shards):
      _check_not_empty(config, [spec], [{}])
  meta = {
      "format": FORMAT_VERSION, "builder": builder,
      "max_seq_length": config.data.max_seq_length,
      "sources": [{"spec": sp.describe(), "weight": sp.weight} for sp in specs],
      "shards": shards, "summary": stats.summary(),
      "data_config": config.data.to_dict(),
      "bytes": {"text": stats.bytes, "shards": sizes["stored"], "int32": sizes["built"]},
  }
  with open(os.path.join(tmp, META_FILE), "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=2)
  shutil.rmtree(out_dir, ignore_errors=True)
  os.replace(tmp, out_dir)      # the output appears complete or not at all
  return meta


def prepared_meta(directory: str) -> dict:
  """The meta.json of a prepared directory (what it holds and how it was made)."""
  path = os.path.join(directory, META_FILE)
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except FileNotFoundError:
    raise DataError(f"data.prepared={directory!r} holds no {META_FILE}; write it with "
                    "`plm-jax data prepare --config ... --out DIR`") from None
  except (OSError, ValueError) as e:
    raise DataError(f"{path} is unreadable ({e}); prepare the data again") from None


def load_prepared(config, directory: str) -> PreparedData:
  """Memory-maps a prepared directory (nothing is read until rows are served)."""
  meta = prepared_meta(directory)
  builder = check_builder(config)
  if meta.get("builder") != builder or meta.get("max_seq_length") != config.data.max_seq_length:
    raise DataError(
        f"data.prepared={directory!r} holds {meta.get('builder')} examples of length "
        f"{meta.get('max_seq_length')}, but the config asks for {builder} examples of length "
        f"{config.data.max_seq_length}; prepare again or match the config")
  tokenizer = load_tokenizer(directory)

  def arrays(shard_list):
    parts = []
    for sh in shard_list:
      fields, encoding = {}, sh.get("encoding", {})       # format 1: stored in full
      for file in sorted(os.listdir(directory)):
        if file.startswith(sh["name"] + ".") and file.endswith(".npy"):
          field = file[len(sh["name"]) + 1:-4]
          try:
            stored = np.load(os.path.join(directory, file), mmap_mode="r")
          except (OSError, ValueError) as e:
            raise DataError(f"{os.path.join(directory, file)} is corrupt ({e}); prepare the "
                            "data again") from None
          fields[field] = compact.decode(stored, encoding.get(field))
      parts.append(fields)
    return _concat_lazy(parts)

  specs = meta["sources"]
  train = [arrays([sh for sh in meta["shards"] if sh["source"] == s and sh["split"] == "train"])
           for s in range(len(specs))]
  evaluation = arrays([sh for sh in meta["shards"] if sh["split"] == "eval"])
  if not evaluation:
    evaluation = {k: np.asarray(v[:config.train.batch_size]) for k, v in train[0].items()}
  stats = BuildStats(**{k: v for k, v in meta["summary"].items()
                        if k in {f.name for f in dataclasses.fields(BuildStats)}})
  stats.seconds = stats.tokenize_seconds = 0.0     # nothing was tokenised by this run
  return PreparedData(tokenizer, builder, train, [s["weight"] for s in specs], evaluation,
                      stats, [s["spec"] for s in specs])


class ShardedRows:
  """Row access over several memory-mapped shards without concatenating them."""

  def __init__(self, parts: list[np.ndarray]):
    self.parts = parts
    self.offsets = np.cumsum([0] + [len(p) for p in parts])
    self.shape = (int(self.offsets[-1]), *parts[0].shape[1:])
    self.dtype = parts[0].dtype

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, i):
    if isinstance(i, (int, np.integer)):
      s = int(np.searchsorted(self.offsets, i, side="right") - 1)
      return self.parts[s][i - self.offsets[s]]
    if isinstance(i, slice):
      return np.stack([self[j] for j in range(*i.indices(len(self)))]) if len(self) else \
          np.zeros((0, *self.shape[1:]), self.dtype)
    return np.stack([self[int(j)] for j in i])


def _concat_lazy(parts: list[dict]) -> dict:
  parts = [p for p in parts if p]
  if not parts:
    return {}
  if len(parts) == 1:
    return parts[0]
  return {k: ShardedRows([p[k] for p in parts]) for k in parts[0]}
