"""export-hf of fine-tuned classifiers: transformers' *ForSequenceClassification, tokenizing the
same texts with the exported tokenizer, gives plm-jax's logits; --best, --step and bad input."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from configs import classify  # noqa: E402
from helpers import family_config  # noqa: E402
from plm_jax import cli, families, workdir as workdirs  # noqa: E402
from plm_jax.data.builtin_corpus import read_builtin_text  # noqa: E402
from plm_jax.data.tokenizer import train_tokenizer  # noqa: E402
from plm_jax.errors import CheckpointError  # noqa: E402
from plm_jax.finetune.classify import data as cdata
from plm_jax.finetune.run import with_body_of  # noqa: E402
from plm_jax.hf.workdir import export_hf  # noqa: E402
from plm_jax.inference import fit_to_devices, load_params  # noqa: E402
from plm_jax.models.classifier import HEAD_PARAMS  # noqa: E402
from plm_jax.families import model_config
from plm_jax.models.config import padded_vocab  # noqa: E402
from plm_jax.run import checkpoint

NAMES = ("blue", "green", "red")
TEXTS = ["Return the value.", "Open the file named in the list and read every line of it, "
         "then close it again.", "A socket"]
PAIRS = ["of the file", "The object", "Which string is it, and where does the thread start?"]
KIND = {"bert": "wordpiece", "albert": "wordpiece", "roberta": "roberta-bpe", "gpt": "bpe",
        "xlnet": "unigram"}


@pytest.fixture(scope="module")
def tokenizers():
  """Small vocabularies of every kind, trained on part of the built-in corpus (quick)."""
  text = read_builtin_text()[:200_000].split("\n")
  return {kind: train_tokenizer(text, kind, 400) for kind in set(KIND.values())}


def fresh(mcfg, seed: int) -> dict:
  """Random parameters, built eagerly (faster than compiling the trainer's sharded init)."""
  return nnx.to_pure_dict(nnx.state(families.build(mcfg, nnx.Rngs(params=seed)), nnx.Param))


def classifier_workdir(path, family: str, tok, num_classes: int = 3, steps=(("best", 2),)):
  """A fine-tuning workdir as `plm-jax finetune` leaves it (config with the labels, tokenizer,
  parameter checkpoints in best/ and checkpoints/) with random parameters, every bias and
  LayerNorm moved off its initial value so that a swapped or transposed tensor cannot pass, and
  the matrices scaled up: the pooled states of a random body at its initial scale differ little
  between texts, and the logits must differ by far more than the tolerance.
  Returns the parameters saved, by (subdir, step)."""
  # Every family at one small size: the eager calls share their compiled ops.
  sizes = {"model.hidden_size": 32, "model.num_heads": 4, "model.mlp_dim": 64,
           "model.num_layers": 2, **({"model.embedding_size": 16} if family == "albert" else {}),
           # GPT: an embedding table without spare rows, as an imported GPT-2's (50,257)
           **({"model.vocab_pad_multiple": 1} if family == "gpt" else {})}
  config = with_body_of(classify.get_config("csv"), family_config(family, **sizes))
  with config.unlocked():
    config.classify.num_classes = num_classes
    config.classify.label_names = NAMES if num_classes > 1 else ()
    config.data.max_seq_length = 40
    config.finetune.train_path = "train.csv"        # never read: no training here
  config = fit_to_devices(config)
  mcfg = model_config(config, padded_vocab(config, tok.vocab_size), tok.pad_id)
  workdirs.save_config(str(path), config)
  tok.save(str(path))

  def moved(path, x, rng):
    x, name = np.asarray(x), path[-1].key
    if name.endswith("bias") or name == "scale":        # biases, LayerNorms (stacked ones too)
      return x + (0.1 * rng.standard_normal(x.shape)).astype(x.dtype)
    # the output layer x 20, every other matrix x 5 (sharper attention)
    return x * np.float32(20 if path[0].key in HEAD_PARAMS and x.shape[-1] == num_classes
                          else 5)

  saved = {}
  for seed, (subdir, step) in enumerate(steps):
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map_with_path(lambda p, x: moved(p, x, rng), fresh(mcfg, seed))
    with checkpoint.make_manager(str(path), subdir=subdir) as manager:
      checkpoint.save(manager, step, {"params": params}, {"step": step})
      manager.wait_until_finished()
    saved[subdir, step] = params
  return saved


def load_exported(out):
  model, info = transformers.AutoModelForSequenceClassification.from_pretrained(
      out, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  return model.eval(), transformers.AutoTokenizer.from_pretrained(out)


@pytest.mark.parametrize("family", ["bert", "roberta", "albert", "gpt", "xlnet"])
def test_exported_classifier_gives_plm_jax_logits(family, tokenizers, tmp_path):
  """Texts (and pairs) of different lengths, tokenized and padded by the exported tokenizer
  (right or left, as the family's transformers head needs), give plm-jax's logits on its own
  encoding (plm_jax/finetune/classify/data.py) within 1e-4; the labels come along."""
  tok = tokenizers[KIND[family]]
  num_classes = 1 if family == "albert" else 3          # one regression among them
  classifier_workdir(tmp_path / "run", family, tok, num_classes)
  export_hf(str(tmp_path / "run"), str(tmp_path / "hf"), best=True)
  theirs, hf_tok = load_exported(str(tmp_path / "hf"))
  assert type(theirs).__name__.endswith("ForSequenceClassification")
  if num_classes > 1:
    assert theirs.config.id2label == dict(enumerate(NAMES))
    assert theirs.config.label2id == {n: i for i, n in enumerate(NAMES)}
    assert theirs.config.problem_type == "single_label_classification"
  else:
    assert theirs.config.num_labels == 1 and theirs.config.problem_type == "regression"
  if family == "gpt":
    # a padding token of its own, one row past the tokenizer's (a zero row added to wte)
    assert hf_tok.pad_token == "<|pad|>" and hf_tok.padding_side == "right"
    assert theirs.config.pad_token_id == tok.vocab_size == theirs.config.vocab_size - 1
  ours = load_params(str(tmp_path / "run"), subdir=checkpoint.BEST_DIR,
                     devices=jax.devices()[:1])          # eager calls: one device is quicker
  model = ours.module()
  for pairs in (None, PAIRS):
    enc, cut = cdata.encode(ours.tokenizer, ours.config.model.family, TEXTS, pairs, 64)
    assert cut == 0
    want = np.asarray(model(enc["input_ids"], enc["segment_ids"],
                            enc["attention_mask"])["logits"])
    batch = hf_tok(TEXTS, pairs, padding=True, return_tensors="pt")
    mask = batch["attention_mask"].numpy().astype(bool)
    assert len(set(mask.sum(1))) == 3 and not mask.all()        # padded, 3 lengths
    for name, ours_name in (("input_ids", "input_ids"), ("token_type_ids", "segment_ids")):
      if name in batch:                  # the same tokens and segment ids, padding aside
        for row, real, mine in zip(batch[name].numpy(), mask, enc[ours_name]):
          np.testing.assert_array_equal(row[real], mine[:real.sum()], err_msg=name)
    with torch.no_grad():
      got = theirs(**batch).logits.numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, err_msg=f"pairs={pairs is not None}")
    assert np.ptp(want, axis=0).min() > 1e-2        # the texts differ, by 100 x the tolerance


def test_export_best_latest_step_and_bad_input(tokenizers, tmp_path, capsys):
  """--best reads best/, no flag the latest of checkpoints/, --step that one; refusals are
  one line and exit status 2."""
  tok = tokenizers["wordpiece"]
  run = tmp_path / "run"
  saved = classifier_workdir(run, "bert", tok, steps=(("best", 2), ("checkpoints", 3),
                                                      ("checkpoints", 5)))

  def head(out):
    return load_file(str(out / "model.safetensors"))["classifier.weight"]

  for args, key in ((["--best"], ("best", 2)), ([], ("checkpoints", 5)),
                    (["--step", "3"], ("checkpoints", 3))):
    out = tmp_path / f"hf{key[1]}"
    assert cli.main(["plm-jax", "export-hf", "--workdir", str(run), "--out", str(out),
                     *args]) == 0
    np.testing.assert_allclose(head(out), saved[key]["classifier"]["kernel"].T, rtol=1e-6)
  assert json.loads((tmp_path / "hf2" / "config.json").read_text())["architectures"] == [
      "BertForSequenceClassification"]

  def refused(workdir, *args):
    capsys.readouterr()
    assert cli.main(["plm-jax", "export-hf", "--workdir", str(workdir), "--out",
                     str(tmp_path / "x"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("plm-jax export-hf: error: "), err
    return err

  assert "--step 4 is not in" in refused(run, "--step", "4")
  assert "saved steps: [2]" in refused(run, "--best", "--step", "3")
  latest_only = tmp_path / "latest-only"
  classifier_workdir(latest_only, "bert", tok, steps=(("checkpoints", 1),))
  assert "holds no best checkpoint" in refused(latest_only, "--best")
  pretraining = tmp_path / "pretraining"
  workdirs.save_config(str(pretraining), family_config("bert"))
  assert "holds a pretraining run: drop --best" in refused(pretraining, "--best")
  with pytest.raises(CheckpointError, match="holds a pretraining run"):
    export_hf(str(pretraining), str(tmp_path / "x"), best=True)
  assert not (tmp_path / "x").exists()
  # a folder that holds files already: refused, untouched; --overwrite writes over the names
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "config.json").write_text("my own")
  (mine / "notes.txt").write_text("kept")
  args = ["plm-jax", "export-hf", "--workdir", str(run), "--out", str(mine)]
  assert cli.main(args) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and f"--out {str(mine)!r} is not empty (2 entries: config.json, " \
      "notes.txt); give a new or empty directory, or --overwrite" in err, err
  assert sorted(os.listdir(mine)) == ["config.json", "notes.txt"]
  assert (mine / "config.json").read_text() == "my own"
  assert cli.main([*args, "--overwrite"]) == 0
  np.testing.assert_allclose(head(mine), saved[("checkpoints", 5)]["classifier"]["kernel"].T,
                             rtol=1e-6)
  assert (mine / "notes.txt").read_text() == "kept"
