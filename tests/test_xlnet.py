"""XLNet: parity with transformers (both ways, two streams, memory), the permutation targets and
mask against the reference pipeline's rules, the example builder, the Unigram tokenizer and
spiece.model import, sizes, and the query stream's blindness to its own token."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from helpers import family_config  # noqa: E402
from plm_jax.data import examples  # noqa: E402
from plm_jax.data.tokenizer import load_tokenizer, train_tokenizer  # noqa: E402
from plm_jax.hf import convert as hf
from plm_jax.families import model_config  # noqa: E402
from plm_jax.models.xlnet import XLNetLMHeadModel, positions_from_target_mapping  # noqa: E402
from plm_jax.objectives.permutation import (PermutationConfig, perm_mask,  # noqa: E402
                                            segment_targets)

V = 99


def make_hf(directory, mem_len=6):
  torch.manual_seed(0)
  cfg = transformers.XLNetConfig(vocab_size=V, d_model=32, n_layer=2, n_head=4, d_inner=64,
                                 mem_len=mem_len, dropout=0.0)
  model = transformers.XLNetLMHeadModel(cfg).eval()
  with torch.no_grad():   # non-trivial LayerNorm / biases: a swapped tensor cannot pass
    for _, p in model.named_parameters():
      if p.ndim == 1:
        p.add_(torch.randn_like(p) * 0.1)
  model.save_pretrained(str(directory))
  return model


def inputs(seed=0, b=3, t=10, p=4):
  """A padded batch with segments 0 / 1 / 2, a random perm_mask and one-hot target_mapping."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, V, (b, t))
  seg = np.zeros((b, t), np.int64)
  seg[:, t // 2:] = 1
  seg[:, -1] = 2
  att = np.ones((b, t), np.int64)
  att[1, 7:] = 0
  att[2, 4:] = 0
  perm = rng.integers(0, 2, (b, t, t)).astype(np.float32)
  pos = np.stack([rng.choice(int(att[i].sum()), p, replace=False) for i in range(b)])
  mapping = np.zeros((b, p, t), np.float32)
  mapping[np.arange(b)[:, None], np.arange(p)[None], pos] = 1
  return ids, seg, att, perm, pos, mapping


def test_parity_two_streams_padding_and_memory(tmp_path):
  ref = make_hf(tmp_path)
  ours = hf.from_pretrained(str(tmp_path))
  assert not ours.fresh
  model = ours.model
  ids, seg, att, perm, pos, mapping = inputs()
  t = torch.tensor
  with torch.no_grad():
    body = ref.transformer(t(ids), token_type_ids=t(seg), attention_mask=t(att),
                           perm_mask=t(perm), target_mapping=t(mapping), use_mems=True)
    out = ref(t(ids), token_type_ids=t(seg), attention_mask=t(att), perm_mask=t(perm),
              target_mapping=t(mapping), use_mems=True)
  # transformers' own inputs: the one-hot target_mapping becomes positions
  hidden, mems = model.features(*map(jnp.asarray, (ids, seg, att, perm)),
                                positions_from_target_mapping(mapping))
  valid = (mapping.sum(-1) > 0)[..., None]
  np.testing.assert_allclose(np.asarray(hidden), body.last_hidden_state.numpy(), atol=1e-4)
  np.testing.assert_allclose(np.asarray(model.logits(hidden)) * valid,
                             out.logits.numpy() * valid, atol=1e-4)
  for layer in range(2):       # memory: each layer's input, [B, M, E] here, [M, B, E] there
    np.testing.assert_allclose(np.asarray(mems[layer]),
                               out.mems[layer].numpy().transpose(1, 0, 2), atol=1e-4)
  # The next segment attends to that memory: same logits across the two segments.
  ids2, seg2, _, perm2, pos2, mapping2 = inputs(seed=1)
  with torch.no_grad():
    out2 = ref(t(ids2), token_type_ids=t(seg2), mems=out.mems, perm_mask=t(perm2),
               target_mapping=t(mapping2), use_mems=True)
  hidden2, _ = model.features(jnp.asarray(ids2), jnp.asarray(seg2), None, jnp.asarray(perm2),
                              jnp.asarray(pos2), mems=mems)
  np.testing.assert_allclose(np.asarray(model.logits(hidden2)), out2.logits.numpy(), atol=1e-4)
  without, _ = model.features(jnp.asarray(ids2), jnp.asarray(seg2), None, jnp.asarray(perm2),
                              jnp.asarray(pos2))
  assert np.abs(np.asarray(without - hidden2)).max() > 1e-3      # the memory mattered
  # The content stream alone (no target_mapping), padded.
  with torch.no_grad():
    plain = ref(t(ids), token_type_ids=t(seg), attention_mask=t(att))
  h, _ = model.features(jnp.asarray(ids), jnp.asarray(seg), jnp.asarray(att), None, None)
  real = att[..., None] > 0
  np.testing.assert_allclose(np.asarray(model.logits(h)) * real, plain.logits.numpy() * real,
                             atol=1e-4)


def test_export_loads_in_transformers_and_round_trips_exactly(tmp_path):
  make_hf(tmp_path / "hf")
  ours = hf.from_pretrained(str(tmp_path / "hf"))
  hf.save_pretrained(ours, str(tmp_path / "out"))
  back = transformers.XLNetLMHeadModel.from_pretrained(str(tmp_path / "out")).eval()
  ids, seg, att, perm, pos, mapping = inputs(seed=2)
  t = torch.tensor
  with torch.no_grad():
    out = back(t(ids), token_type_ids=t(seg), attention_mask=t(att), perm_mask=t(perm),
               target_mapping=t(mapping))
  hidden, _ = ours.model.features(*map(jnp.asarray, (ids, seg, att, perm, pos)))
  np.testing.assert_allclose(np.asarray(ours.model.logits(hidden)), out.logits.numpy(),
                             atol=1e-4)
  again = hf.from_pretrained(str(tmp_path / "out"))
  for a, b in zip(jax.tree.leaves(ours.params), jax.tree.leaves(again.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  config = json.load(open(tmp_path / "out" / "config.json"))
  assert config["model_type"] == "xlnet" and config["d_model"] == 32


@pytest.mark.parametrize("size", ["base", "large"])
def test_parameter_counts_equal_transformers(size):
  from plm_jax.configs import xlnet
  config = xlnet.get_config(size)
  mcfg = model_config(config, 32000)
  abstract = nnx.eval_shape(lambda: XLNetLMHeadModel(mcfg, rngs=nnx.Rngs(0)))
  ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  m = config.model
  with torch.device("meta"):
    ref = transformers.XLNetLMHeadModel(transformers.XLNetConfig(
        vocab_size=32000, d_model=m.hidden_size, n_layer=m.num_layers, n_head=m.num_heads,
        d_inner=m.mlp_dim))
  # transformers counts the tied LM weight once (it is the embedding)
  assert ours == sum(p.numel() for p in ref.parameters())


def reference_perm_mask(tokens, is_masked, ranks_of, sep_cls):
  """The reference `_local_perm`, written from xlnet/data_utils.py, for one part."""
  non_func = ~np.isin(tokens, sep_cls)
  non_mask = ~is_masked & non_func
  masked_or_func = ~non_mask
  rev_index = np.where(non_mask, -1, ranks_of)
  target = masked_or_func & non_func
  self_rev = np.where(target, rev_index, rev_index + 1)
  return (self_rev[:, None] <= rev_index[None, :]) & masked_or_func[None, :]


def test_targets_and_perm_mask_follow_the_reference():
  t, reuse = 24, 12
  rng = np.random.default_rng(0)
  tokens = rng.integers(10, 50, t)
  tokens[[17, 22]] = 3          # <sep>
  tokens[23] = 4                # <cls>
  starts = np.zeros(60, bool)
  starts[::2] = True            # even ids start words: odd ones continue them
  cfg = PermutationConfig(seq_len=t, reuse_len=reuse, num_predict=6, word_starts=starts,
                          functional_ids=np.array([3, 4]), max_ngram=5)
  out = segment_targets(tokens, np.random.default_rng(1), cfg)
  targets = out["perm_targets"].astype(bool)
  ranks = out["perm_ranks"]
  assert targets.sum() <= 6 and not targets[[17, 22, 23]].any()
  assert targets[:reuse].sum() == 3                # half of the goal in the reused part
  # positions / labels / weights are the targets, padded
  n = int(targets.sum())
  np.testing.assert_array_equal(out["target_positions"][:n], np.flatnonzero(targets))
  np.testing.assert_array_equal(out["target_labels"][:n], tokens[targets])
  np.testing.assert_array_equal(out["target_weights"], [1.0] * n + [0.0] * (6 - n))
  # a chosen span never starts inside a word
  chosen = ranks >= 0
  begins = np.flatnonzero(chosen & ~np.r_[False, chosen[:-1]])
  assert all(starts[tokens[b]] or tokens[b] in (3, 4) for b in begins)
  # the mask equals the reference's two local permutations, the reused part first
  mask = np.asarray(perm_mask(jnp.asarray(ranks[None]), jnp.asarray(targets[None]), reuse))[0]
  first = reference_perm_mask(tokens[:reuse], chosen[:reuse], ranks[:reuse], [3, 4])
  second = reference_perm_mask(tokens[reuse:], chosen[reuse:], ranks[reuse:], [3, 4])
  expected = np.block([[first, np.ones((reuse, t - reuse), bool)],
                       [np.zeros((t - reuse, reuse), bool), second]])
  np.testing.assert_array_equal(mask, expected)
  assert mask[targets, targets].all()              # no target sees itself
  later = ~chosen & (np.arange(t) >= reuse)
  assert not mask[later][:, ~chosen].any()          # the later part's context sees all context


def test_query_stream_never_sees_its_own_token(tmp_path):
  make_hf(tmp_path)
  model = hf.from_pretrained(str(tmp_path)).model
  t, reuse = 12, 6
  tokens = np.arange(20, 20 + t)
  cfg = PermutationConfig(seq_len=t, reuse_len=reuse, num_predict=4,
                          word_starts=np.ones(V, bool), functional_ids=np.array([]))
  out = segment_targets(tokens, np.random.default_rng(3), cfg)
  mask = perm_mask(jnp.asarray(out["perm_ranks"][None]),
                   jnp.asarray(out["perm_targets"][None] > 0), reuse)
  target = int(out["target_positions"][0])
  changed = tokens.copy()
  changed[target] = 7
  run = lambda ids: model.features(jnp.asarray(ids[None]), None, None, mask,  # noqa: E731
                                   jnp.asarray(out["target_positions"][None]))[0]
  np.testing.assert_allclose(np.asarray(run(changed))[0, 0], np.asarray(run(tokens))[0, 0],
                             atol=1e-6)
  # ... while the content stream at that position does see it
  h = lambda ids: model.features(jnp.asarray(ids[None]), None, None, mask, None)[0]  # noqa: E731
  assert np.abs(np.asarray(h(changed) - h(tokens))[0, target]).max() > 1e-3


def test_examples_chain_consecutive_segments():
  rng = np.random.default_rng(0)
  docs = [[list(range(100 + 10 * d + s * 3, 100 + 10 * d + s * 3 + 3)) for s in range(3)]
          for d in range(40)]
  out = examples.xlnet_examples(docs, max_seq_length=16, reuse_len=8, segments=2, sep_id=3,
                                cls_id=4, rng=rng)
  ids, seg = out["input_ids"], out["segment_ids"]
  assert ids.shape[1:] == (2, 16) and len(ids) > 5
  stream = np.concatenate([np.asarray(s) for d in docs for s in d])
  for row in ids:
    start = int(np.flatnonzero(stream == row[0, 0])[0])
    # the reused part of segment 1 is the text right after segment 0's
    np.testing.assert_array_equal(row[0, :8], stream[start:start + 8])
    np.testing.assert_array_equal(row[1, :8], stream[start + 8:start + 16])
    for s in range(2):
      assert row[s, -1] == 4 and (row[s] == 3).sum() == 2
  np.testing.assert_array_equal(seg[..., -1], 2)
  assert ((seg[..., :8]) == 0).all()
  # consecutive rows continue where the previous chain stopped
  starts = [int(np.flatnonzero(stream == row[0, 0])[0]) for row in ids]
  np.testing.assert_array_equal(np.diff(starts), 16)


def test_unigram_tokenizer_has_xlnets_special_ids_and_word_starts():
  text = ["the quick brown fox jumps over the lazy dog", "a quick test of words"] * 50
  tok = train_tokenizer(text, "unigram", 60, lowercase=False)
  assert tok.kind == "unigram"
  assert [tok.id_of(t) for t in ("<unk>", "<cls>", "<sep>", "<pad>", "<mask>")] == [0, 3, 4, 5, 6]
  assert (tok.cls_id, tok.sep_id, tok.pad_id, tok.mask_id) == (3, 4, 5, 6)
  ids = tok.encode_batch(["the quick brown fox"])[0]
  starts = tok.word_starts()[ids]
  pieces = [tok.tokenizer.id_to_token(i) for i in ids]
  assert list(starts) == [p.startswith("\u2581") for p in pieces] and starts.sum() == 4
  assert tok.decode(ids) == "the quick brown fox"


def test_spiece_model_imports_with_sentencepieces_encoding(tmp_path):
  spm = pytest.importorskip("sentencepiece")
  from plm_jax.data import builtin_corpus
  corpus = tmp_path / "corpus.txt"
  sentences = [line for line in builtin_corpus.read_builtin_text().splitlines()
               if line.strip()][:3000]
  corpus.write_text("\n".join(sentences))
  spm.SentencePieceTrainer.train(
      input=str(corpus), model_prefix=str(tmp_path / "spiece"), vocab_size=500,
      model_type="unigram", control_symbols=["<cls>", "<sep>", "<pad>", "<mask>", "<eod>"],
      bos_id=1, eos_id=2, unk_id=0, minloglevel=2)
  proc = spm.SentencePieceProcessor(model_file=str(tmp_path / "spiece.model"))
  tok = load_tokenizer(str(tmp_path / "spiece.model"))
  assert tok.kind == "unigram" and tok.vocab_size == proc.get_piece_size()
  assert tok.cls_id == proc.piece_to_id("<cls>") and tok.mask_id == proc.piece_to_id("<mask>")
  assert tok.encode_batch(sentences) == [proc.encode(xlnet_preprocess(s)) for s in sentences]
  assert tok.encode_batch(["``quoted''"])[0] == proc.encode('"quoted"')


def xlnet_preprocess(text: str) -> str:
  """XLNet's preprocess_text (xlnet/prepro_utils.py), what its tokenizer does before
  SentencePiece: spaces collapsed, `` and '' as ", accents stripped."""
  import unicodedata
  text = " ".join(text.strip().split()).replace("``", '"').replace("''", '"')
  text = unicodedata.normalize("NFKD", text)
  return "".join(c for c in text if not unicodedata.combining(c))


@pytest.mark.e2e
def test_pretrain_finetune_and_fill_mask(tmp_path, tokenizers_dir, capsys):
  """A briefly pretrained tiny XLNet fine-tunes through `plm-jax finetune` (sequence summary of
  <cls>) far above chance, and `fill-mask` predicts a masked position."""
  from helpers import ROOT
  from plm_jax import cli
  from test_finetune import write_keyword_task
  body = str(tmp_path / "body")
  config = os.path.join(ROOT, "configs", "xlnet.py")
  assert cli.main(["plm-jax", "train", "--config", f"{config}:tiny", "--workdir", body,
                   "--config.train.steps=2", "--config.train.eval_steps=1",
                   f"--config.data.tokenizer={tokenizers_dir['xlnet']}"]) == 0
  for split, n, seed in (("train", 384, 0), ("eval", 96, 1)):
    write_keyword_task(tmp_path / f"{split}.csv", n, seed)
  run = str(tmp_path / "run")
  assert cli.main(["plm-jax", "finetune", "--config",
                   f"{os.path.join(ROOT, 'configs', 'classify.py')}:csv", "--init-from", body,
                   "--workdir", run, f"--config.finetune.train_path={tmp_path / 'train.csv'}",
                   f"--config.finetune.eval_path={tmp_path / 'eval.csv'}",
                   "--config.classify.text_field=sentence", "--config.finetune.epochs=3",
                   "--config.data.max_seq_length=24", "--config.optim.learning_rate=1e-3",
                   "--config.train.log_every=20"]) == 0
  report = json.load(open(os.path.join(run, "test_report.json")))
  assert report["validation"]["accuracy"] > 0.8, report          # three classes: chance 1/3
  saved = json.load(open(os.path.join(run, "config.json")))
  assert saved["model"]["family"] == "xlnet"
  out = capsys.readouterr().out       # the label map at start-up, per-class figures at the end
  assert "labels: 0 = blue, 1 = green, 2 = red" in out and "precision  recall" in out
  assert cli.main(["plm-jax", "fill-mask", "--workdir", body, "--text",
                   "Return the <mask> of the file.", "--json"]) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  (proposals,) = result["masks"]                  # one <mask>, found between <sep> <cls>
  probs = [p["prob"] for p in proposals]
  assert len(proposals) == 5 and probs == sorted(probs, reverse=True) and 0 < probs[0] < 1


@pytest.mark.parametrize("field,value,says", [
    ("objective.reuse_len", 62, "objective.reuse_len=62 must be in [0, 59]"),
    ("objective.plm_k", 0, "objective.plm_k=0 must be >= 1"),
    ("model.mem_len", -1, "model.mem_len=-1 must be >= 0"),
    ("objective.name", "mlm", "does not fit model.family='xlnet'")])
def test_bad_xlnet_configs_are_named(field, value, says):
  from plm_jax import checks
  from plm_jax.errors import ConfigError
  config = family_config("xlnet", **{field: value})
  with pytest.raises(ConfigError, match=says.replace("[", r"\[").replace("]", r"\]")):
    checks.validate(config, 1)


def test_imported_xlnet_configs_train_as_xlnet_and_refuse_what_they_lack(tmp_path):
  from plm_jax.errors import CheckpointError
  make_hf(tmp_path)
  config = hf.from_pretrained(str(tmp_path)).config
  assert config.objective.name == "plm" and config.model.mem_len == 6
  assert config.objective.reuse_len == config.data.max_seq_length // 2
  assert config.objective.max_ngram == 5
  assert config.model.attention_dropout_rate == config.model.dropout_rate == 0.0   # HF's dropout
  hf_config = json.load(open(tmp_path / "config.json"))
  for field, value in (("bi_data", True), ("attn_type", "uni")):
    with open(tmp_path / "config.json", "w") as f:
      json.dump({**hf_config, field: value}, f)
    with pytest.raises(CheckpointError, match="bi_data=true is not supported"):
      hf.from_pretrained(str(tmp_path))
