"""Sources, tokenizers, example builders, the Grain loader: sharding, resume, prepare."""

import gzip
import json
import os

import numpy as np
import pytest

from helpers import family_config
from plm_jax.data import compact, examples, loader, pipeline, sources
from plm_jax.data.tokenizer import TextTokenizer, load_tokenizer, train_tokenizer
from plm_jax.errors import DataError


# --- sources --------------------------------------------------------------------------------------

def test_parse_documents_blank_lines_and_sentences():
  docs = sources.parse_documents("First one. Second one!\nThird line\n\n  \nOther doc.\n")
  assert docs == [["First one.", "Second one!", "Third line"], ["Other doc."]]


def test_builtin_corpus_is_real_text():
  cfg = family_config("bert")
  docs = sources.load_documents(sources.specs_from_config(cfg.data)[0], cfg.data)
  assert len(docs) > 2000
  assert sum(len(s) for d in docs for s in d) > 400_000


def test_text_files_gzip_bad_bytes_and_empty_files(tmp_path):
  (tmp_path / "a.txt").write_text("One sentence here. Two sentences here.\n\nAnother doc.\n")
  (tmp_path / "b.txt").write_bytes(b"Bad byte \xff here.\n")
  (tmp_path / "c.txt").write_text("")
  with gzip.open(tmp_path / "d.txt.gz", "wt") as f:
    f.write("Zipped text.\n")
  cfg = family_config("bert", **{"data.source": "text", "data.path": str(tmp_path / "*")})
  stats = sources.SourceStats()
  docs = sources.load_documents(sources.specs_from_config(cfg.data)[0], cfg.data, stats)
  assert docs == [["One sentence here.", "Two sentences here."], ["Another doc."],
                  ["Bad byte \ufffd here."], ["Zipped text."]]
  assert (stats.files, stats.documents, stats.empty_documents, stats.undecodable_documents) == (
      4, 4, 1, 1)
  cfg.data.doc_per_file = True
  docs = sources.load_documents(sources.specs_from_config(cfg.data)[0], cfg.data)
  assert docs[0] == ["One sentence here.", "Two sentences here.", "Another doc."]


def test_glob_without_files_and_files_without_text(tmp_path):
  cfg = family_config("bert", **{"data.source": "text", "data.path": str(tmp_path / "x*.txt")})
  with pytest.raises(DataError, match="matches no files"):
    sources.load_documents(sources.specs_from_config(cfg.data)[0], cfg.data)
  (tmp_path / "x.txt").write_text("\n\n  \n")
  with pytest.raises(DataError, match="holds no text"):
    sources.load_documents(sources.specs_from_config(cfg.data)[0], cfg.data)


def test_jsonl_field_and_bad_records(tmp_path):
  lines = [json.dumps({"text": "A first document. It has two sentences."}), "{not json",
           json.dumps({"body": "wrong field"}), json.dumps({"text": 7}),
           json.dumps({"text": "Second document."})]
  with gzip.open(tmp_path / "web.jsonl.gz", "wt") as f:
    f.write("\n".join(lines) + "\n")
  cfg = family_config("bert", **{"data.source": "jsonl", "data.path": str(tmp_path / "*.gz")})
  stats = sources.SourceStats()
  docs = sources.load_documents(sources.specs_from_config(cfg.data)[0], cfg.data, stats)
  assert docs == [["A first document.", "It has two sentences."], ["Second document."]]
  assert stats.bad_records == 3 and stats.bad_record_examples[0].endswith("web.jsonl.gz:2")


def test_mixture_spec():
  cfg = family_config("bert", **{"data.source": "mixture", "data.mixture":
                                 "text:a/*.txt=0.7; tfds:wikipedia/20230601.en@train[:1%]=0.3"})
  specs = sources.specs_from_config(cfg.data)
  assert [(s.kind, s.target, s.split, s.weight) for s in specs] == [
      ("text", "a/*.txt", "train", 0.7), ("tfds", "wikipedia/20230601.en", "train[:1%]", 0.3)]
  cfg.data.mixture = "text:a/*.txt"
  with pytest.raises(DataError, match="KIND:TARGET=WEIGHT"):
    sources.specs_from_config(cfg.data)


def test_tfds_source_with_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  cfg = family_config("bert", **{"data.source": "tfds", "data.tfds_name": "imdb_reviews",
                                 "data.tfds_split": "train[:50%]"})
  with tfds.testing.mock_data(num_examples=20):
    stats = sources.SourceStats()
    docs = sources.load_documents(sources.specs_from_config(cfg.data)[0], cfg.data, stats)
  # (mock_data serves num_examples whatever the slice; real data honours "train[:50%]")
  assert len(docs) == 20 and stats.documents == 20 and all(isinstance(s, str) for s in docs[0])


def test_tfds_not_prepared_says_how(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  cfg = family_config("bert", **{"data.source": "tfds", "data.tfds_name": "imdb_reviews",
                                 "data.tfds_data_dir": str(tmp_path)})
  with pytest.raises(DataError, match="tfds build imdb_reviews --data_dir=.* "
                                      "--file_format=array_record"):
    sources.load_documents(sources.specs_from_config(cfg.data)[0], cfg.data)


# --- tokenizers -----------------------------------------------------------------------------------

def test_trained_tokenizers_special_tokens_and_round_trip(tmp_path):
  texts = ["The quick brown fox jumps over the lazy dog."] * 50
  wp = train_tokenizer(texts, "wordpiece", 200)
  assert wp.mask_id == wp.id_of("[MASK]") and wp.cls_id != wp.sep_id
  assert set(wp.special_ids()) == {wp.id_of(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]",
                                                         "[MASK]")}
  assert not np.isin(wp.regular_ids(), wp.special_ids()).any()
  bpe = train_tokenizer(texts, "bpe", 300)
  ids = bpe.encode_batch(texts[:1])[0]
  assert bpe.decode(ids) == texts[0]
  bpe.save(str(tmp_path))
  again = TextTokenizer.load(str(tmp_path))
  assert again.encode_batch(texts[:1])[0] == ids and again.eos_id == bpe.eos_id
  # callable, with encode / decode for one text
  assert bpe(texts[0]) == bpe.encode(texts[0]) == ids and bpe.decode(bpe(texts[0])) == texts[0]


def test_wordpiece_training_is_reproducible():
  texts = [s for d in sources.parse_documents(
      "A tiny corpus. With some words.\n\nAnd more words here, words again.") for s in d] * 20
  a = train_tokenizer(texts, "wordpiece", 120).tokenizer.get_vocab()
  b = train_tokenizer(texts, "wordpiece", 120).tokenizer.get_vocab()
  assert a == b


def test_bert_vocab_txt_matches_transformers(tmp_path):
  transformers = pytest.importorskip("transformers")
  words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "##s",
           "a", ".", ",", "dog", "##gy", "un", "##believ", "##able", "!"]
  (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
  ours = load_tokenizer(str(tmp_path / "vocab.txt"))
  theirs = transformers.BertTokenizerFast(str(tmp_path / "vocab.txt"), do_lower_case=True)
  text = "The cats sat on the doggy mat, unbelievable! [MASK] ü"
  assert ours.encode_batch([text])[0] == theirs(text, add_special_tokens=False)["input_ids"]
  # Special tokens found by name, wherever they sit in the file.
  assert (ours.pad_id, ours.cls_id, ours.sep_id, ours.mask_id) == (0, 2, 3, 4)
  shuffled = [words[5], *words[:5], *words[6:]]
  (tmp_path / "v2").mkdir()
  (tmp_path / "v2" / "vocab.txt").write_text("\n".join(shuffled) + "\n")
  assert load_tokenizer(str(tmp_path / "v2")).mask_id == 5


def test_gpt2_vocab_json_and_merges(tmp_path):
  transformers = pytest.importorskip("transformers")
  bpe = train_tokenizer(["Hello world, hello tokens. <|endoftext|> again"] * 30, "bpe", 300)
  bpe.tokenizer.model.save(str(tmp_path))        # writes vocab.json + merges.txt
  ours = load_tokenizer(str(tmp_path))
  theirs = transformers.GPT2TokenizerFast(str(tmp_path / "vocab.json"),
                                          str(tmp_path / "merges.txt"))
  text = "Hello tokens, hello world!"
  assert ours.encode_batch([text])[0] == theirs(text)["input_ids"]
  assert ours.eos_id == bpe.eos_id
  os.remove(tmp_path / "merges.txt")
  with pytest.raises(DataError, match="merges.txt is missing"):
    load_tokenizer(str(tmp_path / "vocab.json"))


def test_vocab_without_a_required_special_token_names_the_file(tmp_path):
  (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a"]))
  tok = load_tokenizer(str(tmp_path / "vocab.txt"))
  with pytest.raises(DataError, match=r"vocab.txt lacks the special token\(s\) mask"):
    tok.require(("cls", "sep", "mask", "pad"))


# --- builders -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bert_data(tokenizers_dir):
  config = family_config("bert", **{"data.tokenizer": tokenizers_dir["bert"],
                                    "data.dupe_factor": 2})
  return config, pipeline.prepare_in_memory(config)


def test_bert_pairs_structure_and_nsp_balance(bert_data):
  config, data = bert_data
  tok, ex = data.tokenizer, data.train[0]
  n, t = ex["input_ids"].shape
  assert n > 5000 and t == config.data.max_seq_length
  lengths = ex["attention_mask"].sum(1)
  assert (ex["input_ids"][:, 0] == tok.cls_id).all()
  assert (ex["input_ids"][np.arange(n), lengths - 1] == tok.sep_id).all()
  assert ((ex["input_ids"] == tok.sep_id).sum(1) == 2).all()
  # Segment ids: 0 up to and including the first [SEP], 1 after it, 0 on padding.
  first_sep = np.argmax(ex["input_ids"] == tok.sep_id, axis=1)
  pos = np.arange(t)[None, :]
  expected = ((pos > first_sep[:, None]) & (pos < lengths[:, None])).astype(np.int32)
  np.testing.assert_array_equal(ex["segment_ids"], expected)
  assert (ex["input_ids"][pos >= lengths[:, None]] == tok.pad_id).all()
  share = ex["nsp_labels"].mean()
  assert abs(share - 0.5) < 4 * np.sqrt(0.25 / n), share
  assert data.stats.one_sentence_documents > 0          # handled, and counted


def test_bert_true_next_segments_continue_the_document():
  docs = [[[10 + i, 10 + i] for i in range(6)], [[100 + i] * 3 for i in range(6)]]
  rng = np.random.default_rng(0)
  seen_true = 0
  for _ in range(50):
    for a, b, is_random in examples.bert_pairs_from_document(docs, 0, 64, 0.0, rng):
      if not is_random:
        seen_true += 1
        assert b[0] == a[-1] + 1 or b[0] == a[-1]     # B starts where A stopped
      else:
        assert all(x >= 100 for x in b)               # B from the other document
  assert seen_true > 10


def test_sentence_order_pairs_come_from_one_document_swapped_half_the_time():
  """ALBERT's SOP: both segments from the same document; label 0 keeps their order, label 1
  swaps them; about half are swapped. Token 1000 d + k is the k-th token of document d."""
  docs = [[[1000 * d + 10 * s + k for k in range(4)] for s in range(12)] for d in range(1, 200)]
  ex = examples.bert_examples(docs, max_seq_length=48, short_seq_prob=0.1, dupe_factor=3,
                              cls_id=2, sep_id=3, pad_id=0, rng=np.random.default_rng(0),
                              sentence_order=True)
  assert "nsp_labels" not in ex and len(ex["sop_labels"]) > 300
  for ids, seg, label in zip(ex["input_ids"], ex["segment_ids"], ex["sop_labels"]):
    real = ids[(ids >= 1000)]
    a, b = ids[(seg == 0) & (ids >= 1000)], ids[(seg == 1) & (ids >= 1000)]
    assert len(set(real // 1000)) == 1                      # one document
    if label == 0:
      assert a.max() < b.min()                              # A before B, as written
    else:
      assert a.min() > b.max()                              # swapped
  assert abs(ex["sop_labels"].mean() - 0.5) < 0.06


def test_short_sequence_rate():
  # Long documents, so that the short leftover chunk at each document's end is rare (~3%).
  docs = [[[i % 50 + 5] * 8 for i in range(400)] for _ in range(40)]
  rng = np.random.default_rng(0)
  ex = examples.bert_examples(docs, max_seq_length=128, short_seq_prob=0.1, dupe_factor=1,
                              cls_id=2, sep_id=3, pad_id=0, rng=rng)
  lengths = ex["attention_mask"].sum(1)
  # Full-target examples hold >= 125 - 8 tokens; 10% of targets are uniform in [2, 125], of
  # which ~80% end below 100 tokens: expect ~8% + ~3% leftovers.
  short = (lengths < 100).mean()
  assert 0.07 < short < 0.15, short


def test_long_sentences_never_overflow_a_sequence():
  docs = [[list(range(5, 500))], [list(range(5, 20)), list(range(30, 40))]]
  ex = examples.bert_examples(docs, max_seq_length=32, short_seq_prob=0.0, dupe_factor=3,
                              cls_id=2, sep_id=3, pad_id=0, rng=np.random.default_rng(0))
  assert ex["input_ids"].shape[1] == 32 and (ex["attention_mask"].sum(1) <= 32).all()
  full = examples.full_sentence_examples(docs, max_seq_length=32, cls_id=2, sep_id=3, pad_id=0)
  assert (full["attention_mask"].sum(1) <= 32).all()


def test_full_sentences_pack_across_documents_with_a_separator():
  docs = [[[5, 6], [7]], [[8, 9, 10]], [[11] * 3]]
  ex = examples.full_sentence_examples(docs, max_seq_length=10, cls_id=2, sep_id=3, pad_id=0)
  np.testing.assert_array_equal(ex["input_ids"][0], [2, 5, 6, 7, 3, 8, 9, 10, 3, 0])
  np.testing.assert_array_equal(ex["input_ids"][1], [2, 11, 11, 11, 3, 0, 0, 0, 0, 0])
  assert (ex["segment_ids"] == 0).all()


def test_gpt_blocks_shift_by_one():
  docs = [[1, 2, 3], [4, 5, 6, 7], [8, 9]]
  ex = examples.gpt_examples(docs, max_seq_length=4, eos_id=0)
  np.testing.assert_array_equal(ex["tokens"], [[1, 2, 3, 0, 4], [4, 5, 6, 7, 0]])


def test_gpt_packed_rows_never_cross_documents():
  docs = [[1, 2, 3], [4, 5, 6, 7], [8, 9], list(range(10, 22))]
  ex = examples.gpt_packed_examples(docs, max_seq_length=7, eos_id=0)
  # Documents stay whole and in order (next fit); one longer than a row is cut into rows.
  np.testing.assert_array_equal(ex["tokens"][0], [1, 2, 3, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(ex["segment_ids"][0], [1, 1, 1, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(ex["tokens"][1], [4, 5, 6, 7, 0, 8, 9, 0])
  np.testing.assert_array_equal(ex["segment_ids"][1], [1, 1, 1, 1, 1, 2, 2, 2])
  np.testing.assert_array_equal(ex["positions"][1], [0, 1, 2, 3, 4, 0, 1, 2])
  assert sorted(np.concatenate([r[s > 0] for r, s in zip(ex["tokens"], ex["segment_ids"])])
                ) == sorted(t for d in docs for t in (*d, 0))
  # Served: labels inside a document only; no prediction of a document from the previous one.
  config = family_config("gpt", **{"data.builder": "packed"})

  class Tok:
    def special_ids(self):
      return np.array([0])

  data = pipeline.PreparedData(Tok(), "packed", [ex], [1.0], ex, pipeline.BuildStats(), ["x"])
  served = loader.Server(config, data, loader.TRAIN)({**{k: v[1:2] for k, v in ex.items()},
                                                      "index": np.array([1])})
  np.testing.assert_array_equal(served["input_ids"][0], [4, 5, 6, 7, 0, 8, 9])
  np.testing.assert_array_equal(served["labels"][0], [5, 6, 7, 0, 8, 9, 0])
  np.testing.assert_array_equal(served["label_weights"][0], [1, 1, 1, 1, 0, 1, 1])
  np.testing.assert_array_equal(served["segment_ids"][0], [1, 1, 1, 1, 1, 2, 2])
  np.testing.assert_array_equal(served["positions"][0], [0, 1, 2, 3, 4, 0, 1])


# --- the loader -----------------------------------------------------------------------------------

def test_batches_are_deterministic_and_masks_dynamic(bert_data):
  config, data = bert_data
  train = loader.Batches(config, data, loader.TRAIN)
  a, b = train.batch(3), train.batch(3)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(train.batch(4)["input_ids"], a["input_ids"])
  for k, (shape, dtype) in loader.batch_shapes(config).items():
    assert a[k].shape == shape and a[k].dtype == dtype, k


def test_two_hosts_see_disjoint_halves_of_each_global_batch(bert_data):
  config, data = bert_data
  whole = loader.Batches(config, data, loader.TRAIN, process_index=0, process_count=1)
  hosts = [loader.Batches(config, data, loader.TRAIN, process_index=p, process_count=2)
           for p in range(2)]
  for step in (0, 1, 57):
    full = whole.batch(step)
    halves = [h.batch(step) for h in hosts]
    assert all(len(h["input_ids"]) == config.train.batch_size // 2 for h in halves)
    # Host p holds the p-th half of the global batch: together exactly that batch, row for
    # row (so dropout masks and losses match one host's), masks too.
    for k in full:
      merged = np.concatenate([halves[0][k], halves[1][k]])
      np.testing.assert_array_equal(merged, full[k], err_msg=k)


def test_one_epoch_is_every_example_once_split_between_hosts():
  config = family_config("gpt", **{"train.batch_size": 8, "data.max_seq_length": 3})
  n = 64
  rows = {"tokens": np.arange(n * 4, dtype=np.int32).reshape(n, 4)}     # row r starts at 4r

  class Tok:
    def special_ids(self):
      return np.array([0])

  data = pipeline.PreparedData(Tok(), "blocks", [rows], [1.0], rows, pipeline.BuildStats(), ["x"])
  hosts = [loader.Batches(config, data, loader.TRAIN, process_index=p, process_count=2)
           for p in range(2)]
  for epoch in range(2):
    steps = range(epoch * n // 8, (epoch + 1) * n // 8)
    seen = [np.concatenate([h.batch(s)["input_ids"][:, 0] // 4 for s in steps]) for h in hosts]
    assert not set(seen[0]) & set(seen[1])                 # disjoint shares
    assert sorted(np.concatenate(seen)) == list(range(n))  # whose union is the whole epoch
    if epoch == 0:
      first_order = np.concatenate(seen)
  assert not np.array_equal(np.concatenate(seen), first_order)   # reshuffled every epoch


def test_iterator_resumes_where_it_stopped(bert_data):
  config, data = bert_data
  train = loader.Batches(config, data, loader.TRAIN)
  straight = train.iterator()
  expected = [next(straight) for _ in range(6)]
  straight.close()
  first = train.iterator()
  for _ in range(4):
    next(first)
  state = first.get_state()
  first.close()
  assert state == {"next_index": 4, "next_example": 4 * config.train.batch_size}
  resumed = train.iterator(json.loads(json.dumps(state)))   # as stored in a checkpoint
  for want in expected[4:]:
    got = next(resumed)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
  resumed.close()


def test_mixture_weights(tmp_path, tokenizers_dir):
  (tmp_path / "a.txt").write_text("\n\n".join(f"Alpha document number {i}. It is about alpha."
                                              for i in range(200)))
  (tmp_path / "b.txt").write_text("\n\n".join(f"Beta document number {i}. It is about beta."
                                              for i in range(200)))
  config = family_config("gpt", **{
      "data.tokenizer": tokenizers_dir["gpt"], "data.source": "mixture",
      "data.mixture": f"text:{tmp_path}/a.txt=0.75;text:{tmp_path}/b.txt=0.25",
      "data.max_seq_length": 16, "data.builder": "packed"})
  data = pipeline.prepare_in_memory(config)
  train = loader.Batches(config, data, loader.TRAIN)
  rows = [data.tokenizer.decode(r) for s in range(40) for r in train.batch(s)["input_ids"]]
  alpha = sum("Alpha" in r for r in rows)
  beta = sum("Beta" in r for r in rows)
  assert 0.65 < alpha / (alpha + beta) < 0.85, (alpha, beta)


def test_eval_only_builds_the_same_eval_examples(bert_data):
  """Evaluating a checkpoint tokenises the held-out documents only, into the same examples."""
  config, memory = bert_data
  evaluation = pipeline.prepare_in_memory(config, memory.tokenizer, eval_only=True)
  assert evaluation.stats.examples == 0 and evaluation.stats.tokens < memory.stats.tokens / 5
  assert evaluation.eval.keys() == memory.eval.keys()
  for k, values in memory.eval.items():
    np.testing.assert_array_equal(evaluation.eval[k], values)


def test_prepared_on_disk_serves_the_same_batches(tmp_path, tokenizers_dir, bert_data):
  config, memory = bert_data
  meta = pipeline.prepare_to_disk(config, str(tmp_path / "prep"), log=lambda *_: None)
  assert meta["summary"]["examples"] == len(memory.train[0]["input_ids"])
  assert meta["summary"]["tokenize_mb_per_s"] > 0
  with config.unlocked():
    config.data.prepared = str(tmp_path / "prep")
  disk = pipeline.load_prepared(config, config.data.prepared)
  a = loader.Batches(config, memory, loader.TRAIN).batch(5)
  b = loader.Batches(config, disk, loader.TRAIN).batch(5)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  # compact shards: every stored row reads back as the int32 row that was built
  for built, read in ((memory.train[0], disk.train[0]), (memory.eval, disk.eval)):
    for k, values in built.items():
      rows = np.stack([read[k][i] for i in range(len(values))])
      assert rows.dtype == np.int32, k
      np.testing.assert_array_equal(rows, values)
  files = {f.split(".")[1]: np.load(tmp_path / "prep" / f) for f in os.listdir(tmp_path / "prep")
           if f.startswith("train-") and f.endswith(".npy")}
  assert files["input_ids"].dtype == np.uint16 and files["segment_ids"].dtype == np.uint8
  assert files["attention_mask"].ndim == 1              # the mask is stored as row lengths
  size = meta["bytes"]
  assert size["int32"] == sum(v.nbytes for d in (memory.train[0], memory.eval) for v in d.values())
  assert size["int32"] / size["shards"] > 3.5
  with pytest.raises(DataError, match="already holds prepared data"):
    pipeline.prepare_to_disk(config, str(tmp_path / "prep"), log=lambda *_: None)
  other = family_config("bert", **{"data.max_seq_length": 32})
  with pytest.raises(DataError, match="of length 64, but the config asks for nsp examples of "
                                      "length 32"):
    pipeline.load_prepared(other, str(tmp_path / "prep"))


def test_builder_must_fit_the_objective():
  config = family_config("gpt", **{"data.builder": "nsp"})
  with pytest.raises(DataError, match="use --config.data.builder=blocks"):
    pipeline.check_builder(config)


def test_each_process_reads_the_rows_its_devices_hold():
  """On a v5e-256 (4 chips per host) a host's devices hold non-contiguous blocks of the batch;
  each process must read exactly those rows, and all processes together the whole batch."""
  from plm_jax import parallel
  from plm_jax.hardware import topology
  t = topology.get("v5e-256")
  mesh = parallel.make_mesh((16, 16, 1), topology.fake_devices(t))
  rows = [loader.process_rows(mesh, p, 512) for p in range(t.num_processes)]
  assert all(len(r) == 8 for r in rows)                       # 512 / 64 hosts
  assert sorted(np.concatenate(rows)) == list(range(512))
  blocks = sorted({int(r) // 2 for r in rows[0]})              # 2 rows per device
  assert blocks != [0, 1, 2, 3]                                # not the first contiguous block
  for b in blocks:                                             # the blocks of process 0's chips
    d = mesh.devices.reshape(256, -1)[b][0]
    assert d.process_index == 0
  # one process: every row, in order (what jax.make_array_from_process_local_data expects)
  assert list(loader.process_rows(parallel.make_mesh((2, 4, 1)), 0, 32)) == list(range(32))


def test_compact_encoding_round_trips_any_shape():
  """Smallest types, masks as lengths (also [n, segments, T] as XLNet's), other masks cast."""
  rng = np.random.default_rng(0)
  lengths = rng.integers(0, 9, (5, 2))
  arrays = {"input_ids": rng.integers(0, 70_000, (5, 2, 8)).astype(np.int32),
            "attention_mask": (np.arange(8) < lengths[..., None]).astype(np.int32),
            "offsets": rng.integers(-100, 100, (5, 8)).astype(np.int32)}
  holes = arrays["attention_mask"][0].copy()
  holes[0, 0] = 0                                 # not ones-then-zeros: stored as it is
  stored, how = compact.encode(arrays)
  assert stored["input_ids"].dtype == np.uint32 and stored["offsets"].dtype == np.int8
  assert stored["attention_mask"].shape == (5, 2) and stored["attention_mask"].dtype == np.uint8
  for k, values in arrays.items():
    view = compact.decode(stored[k], how[k])
    np.testing.assert_array_equal(np.stack([view[i] for i in range(5)]), values)
    assert view[3].dtype == np.int32 and view.shape == values.shape
  stored, how = compact.encode({"attention_mask": holes})
  assert how["attention_mask"]["kind"] == "cast"
  np.testing.assert_array_equal(compact.decode(stored["attention_mask"], how["attention_mask"])[1],
                                holes[1])
