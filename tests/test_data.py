"""Corpus parsing, tokenizers, BERT pairs (NSP), GPT blocks, the deterministic loader."""

import numpy as np
import pytest

from conftest import family_config
from plm_jax.data import corpus, examples, loader
from plm_jax.data.tokenizer import TextTokenizer, train_tokenizer
from plm_jax.errors import DataError


def test_parse_documents_blank_lines_and_sentences():
  docs = corpus.parse_documents("First one. Second one!\nThird line\n\n  \nOther doc.\n")
  assert docs == [["First one.", "Second one!", "Third line"], ["Other doc."]]


def test_builtin_corpus_is_real_text():
  docs = corpus.load_documents(family_config("bert").data)
  assert len(docs) > 2000
  assert sum(len(s) for d in docs for s in d) > 400_000


def test_text_source_glob_and_errors(tmp_path):
  (tmp_path / "a.txt").write_text("One sentence here. Two sentences here.\n\nAnother doc.\n")
  (tmp_path / "b.txt").write_bytes(b"Bad byte \xff here.\n")
  cfg = family_config("bert", **{"data.source": "text", "data.path": str(tmp_path / "*.txt")})
  docs = corpus.load_documents(cfg.data)
  assert len(docs) == 3 and "\ufffd" in docs[2][0]
  cfg.data.path = str(tmp_path / "none*.txt")
  with pytest.raises(DataError, match="matches no files"):
    corpus.load_documents(cfg.data)
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "e.txt").write_text("\n\n  \n")
  cfg.data.path = str(tmp_path / "empty" / "*.txt")
  with pytest.raises(DataError, match="hold no text"):
    corpus.load_documents(cfg.data)


def test_tokenizers_special_tokens_and_round_trip(tmp_path):
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


def test_wordpiece_training_is_reproducible():
  texts = [s for d in corpus.parse_documents(
      "A tiny corpus. With some words.\n\nAnd more words here, words again.") for s in d] * 20
  a = train_tokenizer(texts, "wordpiece", 120).tokenizer.get_vocab()
  b = train_tokenizer(texts, "wordpiece", 120).tokenizer.get_vocab()
  assert a == b


@pytest.fixture(scope="module")
def bert_data(tokenizers_dir):
  config = family_config("bert", **{"data.tokenizer": tokenizers_dir["bert"],
                                    "data.dupe_factor": 2})
  return config, *loader.build_datasets(config)


def test_bert_pairs_structure_and_nsp_balance(bert_data):
  config, tok, train, _ = bert_data
  ex = train.examples
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


def test_gpt_blocks_shift_by_one():
  docs = [[1, 2, 3], [4, 5, 6, 7], [8, 9]]
  ex = examples.gpt_examples(docs, max_seq_length=4, eos_id=0)
  np.testing.assert_array_equal(ex["input_ids"], [[1, 2, 3, 0], [4, 5, 6, 7]])
  np.testing.assert_array_equal(ex["labels"], [[2, 3, 0, 4], [5, 6, 7, 0]])


def test_batches_are_deterministic_and_masks_dynamic(bert_data):
  config, _, train, _ = bert_data
  a, b = train.batch(3), train.batch(3)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(train.batch(4)["input_ids"], a["input_ids"])
  # The same example served in two epochs gets different masks (dynamic masking).
  spe = train.steps_per_epoch
  rows0, rows1 = train._rows(0), train._rows(spe)
  common = np.intersect1d(rows0, rows1)
  assert len(common) > 0 or spe > 0
  shapes = loader.batch_shapes(config)
  for k, (shape, dtype) in shapes.items():
    assert a[k].shape == shape and a[k].dtype == dtype, k
