"""`plm-jax tokenizer train`, `plm-jax data prepare` and `plm-jax data bench`."""

import json
import os
import time
import types

import jax

from plm_jax import checks
from plm_jax.data import loader, pipeline, sources
from plm_jax.data.tokenizer import KINDS, train_tokenizer
from plm_jax.errors import DataError
from plm_jax.run.metrics_writer import console


def tokenizer_train(input_glob: str, kind: str, vocab_size: int, out: str, *,
                    lowercase: bool, text_field: str = "text") -> dict:
  """Trains a vocabulary on text files (.txt/.gz: blank-line separated documents) or JSON lines
  (.jsonl/.jsonl.gz, the text in `text_field`) and writes OUT/tokenizer.json."""
  if kind not in KINDS:
    raise DataError(f"--kind={kind!r} is not one of {', '.join(KINDS)}")
  if vocab_size < 300:
    raise DataError(f"--vocab-size={vocab_size} is too small (a vocabulary of the kinds here "
                    "needs hundreds of entries; byte-level BPE 256 for its bytes alone); use e.g. "
                    "8000 or 30522")
  stats = sources.SourceStats()
  jsonl = [p for p in sources.expand_glob(input_glob) if ".jsonl" in os.path.basename(p)]
  spec = sources.SourceSpec("jsonl" if jsonl else "text", input_glob)

  # What read_documents needs of config.data.
  data_cfg = types.SimpleNamespace(doc_per_file=False, text_field=text_field, tfds_data_dir="")
  t0 = time.perf_counter()
  texts = (s for d in sources.read_documents(spec, data_cfg, stats) for s in d)
  tok = train_tokenizer(texts, kind, vocab_size, lowercase=lowercase, show_progress=True)
  path = tok.save(out)
  summary = {"tokenizer": path, "kind": kind, "vocab_size": tok.vocab_size, "files": stats.files,
             "documents": stats.documents, "mb": round(stats.bytes / 1e6, 2),
             "seconds": round(time.perf_counter() - t0, 2)}
  console(f"wrote {path}: {kind}, {tok.vocab_size:,} entries from {stats.documents:,} documents "
          f"({summary['mb']} MB) in {summary['seconds']}s")
  return summary


def data_prepare(config, out: str) -> dict:
  """Tokenises the configured sources once into OUT (see plm_jax.data.pipeline)."""
  checks.validate_data(config)
  console(f"preparing {config.data.source} data into {out} ({config.data.builder} examples of "
          f"{config.data.max_seq_length} tokens)")
  meta = pipeline.prepare_to_disk(config, out, log=console)
  s = meta["summary"]
  console(f"done: {s['documents']:,} documents ({s['bytes'] / 1e6:.1f} MB), {s['tokens']:,} "
          f"tokens -> {s['examples']:,} train / {s['eval_examples']:,} eval examples in "
          f"{s['seconds']}s ({s['mb_per_s']} MB/s); skipped or repaired: "
          f"{s['empty_documents']} empty documents, {s['bad_records']} bad records "
          f"{s['bad_record_examples'] or ''}, {s['undecodable_documents']} documents with "
          f"undecodable bytes; {s['one_sentence_documents']} one-sentence documents, "
          f"{s['long_sentences']} sentences longer than a sequence")
  size = meta["bytes"]
  console(f"shards: {size['shards'] / 1e6:.1f} MB for {size['text'] / 1e6:.1f} MB of text "
          f"({size['shards'] / max(size['text'], 1):.1f}x the text; stored as int32 they would "
          f"take {size['int32'] / 1e6:.1f} MB, {size['int32'] / max(size['shards'], 1):.1f}x "
          "more)")
  console(json.dumps({"figure": "data_prepare", **s, "shard_bytes": size["shards"]}))
  return meta


def data_bench(config, batches: int = 50) -> dict:
  """Tokenisation throughput (MB/s) and loader throughput (examples/s) on this machine."""
  checks.validate_data(config)
  t0 = time.perf_counter()
  data = (pipeline.load_prepared(config, config.data.prepared) if config.data.prepared
          else pipeline.prepare_in_memory(config))
  prepare_s = time.perf_counter() - t0
  train = loader.Batches(config, data, loader.TRAIN)
  iterator = train.iterator()
  next(iterator)                                  # start the thread
  t0 = time.perf_counter()
  rows = 0
  for _ in range(batches):
    rows += len(next(iterator)["input_ids"])
  loader_s = time.perf_counter() - t0
  iterator.close()
  s = data.stats
  result = {
      "figure": "data_bench", "source": ", ".join(data.descriptions), "builder": data.builder,
      "documents": s.documents, "mb": round(s.bytes / 1e6, 2), "tokens": s.tokens,
      "prepare_s": round(prepare_s, 2),
      "tokenize_mb_per_s": s.summary()["tokenize_mb_per_s"],
      "prepare_mb_per_s": s.summary()["mb_per_s"],
      "loader_examples_per_s": round(rows / loader_s, 1),
      "loader_ms_per_batch": round(loader_s / batches * 1e3, 2),
      "batch_size": config.train.batch_size, "processes": jax.process_count(),
      "prefetch": config.data.prefetch,
  }
  console(f"data: {result['mb']} MB, {s.documents:,} documents "
          + f"tokenised at {result['tokenize_mb_per_s']} MB/s, prepared at "
          f"{result['prepare_mb_per_s']} MB/s; "
          + f"loader: {result['loader_examples_per_s']:,} examples/s "
          f"({result['loader_ms_per_batch']} ms per batch of {config.train.batch_size})")
  console(json.dumps(result))
  return result
