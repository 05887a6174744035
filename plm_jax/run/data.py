"""The data of a pretraining run: prepared shards or the sources tokenised now, with one
tokenizer for every process."""

import time

import jax

from plm_jax.hardware import distributed
from plm_jax.data import pipeline
from plm_jax.data.tokenizer import TextTokenizer
from plm_jax.errors import CheckpointError
from plm_jax.run.metrics_writer import console


def shared_tokenizer(config) -> TextTokenizer:
  """data.tokenizer, or one trained on the corpus by process 0 and sent to the others: HF
  tokenizers' training is not bit-reproducible, and every process must use the same ids."""
  if config.data.tokenizer or jax.process_count() == 1:
    return pipeline.corpus_tokenizer(config, log=console)
  text = None
  if jax.process_index() == 0:
    text = pipeline.corpus_tokenizer(config, log=console).tokenizer.to_str().encode("utf-8")
  return TextTokenizer.from_json(distributed.broadcast_bytes(text).decode("utf-8"))


# Data fields a run keeps when it reads prepared data: how it reads it, and what it asks of it
# (load_prepared refuses data of another builder or length, rather than taking it over).
KEPT_FIELDS = ("prepared", "prefetch", "builder", "max_seq_length")


def load_data(config, tokenizer: TextTokenizer | None = None, *,
              eval_only: bool = False) -> pipeline.PreparedData:
  """Prepared data (data.prepared) or the sources tokenised now (with `tokenizer`, e.g. the
  workdir's, else a shared one); prints the summary. `eval_only` (evaluating a checkpoint)
  tokenises the held-out documents only."""
  t0 = time.time()
  if config.data.prepared:
    data = pipeline.load_prepared(config, config.data.prepared)
    same = tokenizer is None or (tokenizer.tokenizer.get_vocab()
                                 == data.tokenizer.tokenizer.get_vocab())
    if not same:
      raise CheckpointError(f"data.prepared={config.data.prepared!r} was tokenised with another "
                            "vocabulary than the workdir's tokenizer.json; use the same one")
  else:
    data = pipeline.prepare_in_memory(config, tokenizer or shared_tokenizer(config),
                                      eval_only=eval_only)
  s = data.stats
  held_out = eval_only and not config.data.prepared       # only those documents were tokenised
  documents = (f"the held-out documents of {s.documents:,}" if held_out
               else f"{s.documents:,} documents")
  train = "" if held_out else f"{s.examples:,} train / "
  console(f"data: {', '.join(data.descriptions)}: {documents}, {s.tokens:,} tokens "
          f"-> {train}{s.eval_examples:,} eval {data.builder} examples of "
          f"{config.data.max_seq_length} tokens; vocab {data.tokenizer.vocab_size:,}; skipped: "
          f"{s.empty_documents} empty, {s.bad_records} bad records, {s.undecodable_documents} "
          f"with undecodable bytes; {time.time() - t0:.1f}s")
  return data


def record_prepared_fields(config) -> None:
  """With data.prepared, config.data takes the values the data was made with (source,
  vocabulary, dupe factor, ...), so that the run's saved config says what really ran and a resumed
  run is compared with it; KEPT_FIELDS stay the run's."""
  if not config.data.prepared:
    return
  made_with = pipeline.prepared_meta(config.data.prepared).get("data_config", {})
  with config.unlocked():
    for key, value in made_with.items():
      if key in config.data and key not in KEPT_FIELDS:
        config.data[key] = value
