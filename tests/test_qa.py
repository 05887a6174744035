"""Extractive question answering: SQuAD's metrics (by hand and against the official scripts),
windows over long contexts and the way back to text, the no-answer threshold, SQuAD by name from
TFDS (mock data), bad input, and one whole run that learns a span task, evaluated and exported
to transformers with the same logits."""

import json
import os
import types

import jax
import numpy as np
import pytest
from flax import nnx

import squad_reference as ref
from configs import qa as qa_preset
from helpers import family_config
from plm_jax import cli, families, workdir as workdirs
from plm_jax.data.tokenizer import TextTokenizer
from plm_jax.finetune.qa import data as qa_data
from plm_jax.finetune.qa.metrics import best_thresholds, exact, f1, normalize_answer, squad_metrics
from plm_jax.families import model_config
from plm_jax.finetune.qa.run import split_answers
from plm_jax.models.config import padded_vocab
from plm_jax.run import checkpoint

FILLER = ("the of a to is and in for it be this that an on as by with are or not from at if "
          "which value object return function file name list").split()
ANSWERS = "thread socket string python module class method number error type line data".split()


def run_cli(*args):
  return cli.main(["plm-jax", *args])


@pytest.fixture(scope="module")
def tok_dirs(tokenizers_dir, tmp_path_factory):
  """The shared WordPiece and Unigram tokenizers, and a small RoBERTa BPE one (quick)."""
  from plm_jax.data.builtin_corpus import read_builtin_text
  from plm_jax.data.tokenizer import train_tokenizer
  roberta = tmp_path_factory.mktemp("roberta-bpe")
  train_tokenizer(read_builtin_text()[:200_000].split("\n"), "roberta-bpe", 400).save(
      str(roberta))
  return {"bert": tokenizers_dir["bert"], "albert": tokenizers_dir["bert"],
          "xlnet": tokenizers_dir["xlnet"], "roberta": str(roberta)}


# --- metrics --------------------------------------------------------------------------------------

def test_normalisation_exact_match_and_f1_by_hand():
  assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
  assert normalize_answer("an apple, a pear and THE plum") == "apple pear and plum"
  assert normalize_answer("theory") == "theory"            # articles are whole words only
  assert exact("the cat", "Cat.") == 1.0 and exact("cat", "cats") == 0.0
  # gold "big red dog", prediction "red dog barked": 2 shared, precision 2/3, recall 2/3
  assert f1("big red dog", "the red dog barked") == pytest.approx(2 / 3)
  # repeated tokens count once per occurrence: gold "a b b", pred "b b b": 2 / 3 each
  assert f1("x y y", "y y y") == pytest.approx(2 / 3)
  # v2.0: agreeing on no answer scores 1, one side empty 0; v1.1: an empty side scores 0
  assert f1("", "") == 1.0 and f1("", "the") == 1.0 and f1("cat", "") == 0.0
  assert f1("", "", v2=False) == 0.0
  golds = {"a": ["Denver Broncos", "the Broncos"], "b": ["1990"], "c": []}
  m = squad_metrics(golds, {"a": "Broncos", "b": "in 1990", "c": ""}, v2=True)
  # a: best over golds: "the Broncos" -> exact 1; b: exact 0, f1 2*(1/2*1)/(3/2) = 2/3; c: 1
  assert m["exact_match"] == pytest.approx(100 * 2 / 3)
  assert m["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1) / 3)
  assert (m["HasAns_total"], m["NoAns_total"]) == (2, 1)
  assert m["HasAns_exact_match"] == 50.0 and m["NoAns_f1"] == 100.0


def random_answer(rng, words):
  return " ".join(rng.choice(words, size=int(rng.integers(0, 4))))


@pytest.mark.parametrize("v2", [False, True])
def test_metrics_equal_the_official_scripts(v2):
  """Random golds (several per question; v2: some unanswerable) and predictions with overlaps,
  punctuation, articles and case: the same numbers as evaluate-v1.1.py / evaluate-v2.0.py."""
  rng = np.random.default_rng(v2)
  words = ["The", "a", "cat", "cat.", "Dog", "an", "dog's", "red", "(red)", "1990", "x-y", "xy"]
  golds, preds, diffs = {}, {}, {}
  for i in range(400):
    answers = [random_answer(rng, words) or "cat" for _ in range(int(rng.integers(1, 4)))]
    if v2 and rng.random() < 0.3:
      answers = []
    golds[str(i)] = answers
    preds[str(i)] = (answers[0] if answers and rng.random() < 0.3 else
                     random_answer(rng, words))
    diffs[str(i)] = float(rng.normal())
  ours = squad_metrics(golds, preds, v2)
  theirs = ref.evaluate_v2(golds, preds, diffs) if v2 else ref.evaluate_v1(golds, preds)
  assert ours["exact_match"] == pytest.approx(theirs["exact" if v2 else "exact_match"])
  assert ours["f1"] == pytest.approx(theirs["f1"])
  assert 5 < ours["f1"] < 95                           # neither trivial way
  if v2:
    for part in ("HasAns", "NoAns"):
      assert ours[f"{part}_exact_match"] == pytest.approx(theirs[f"{part}_exact"])
      assert ours[f"{part}_f1"] == pytest.approx(theirs[f"{part}_f1"])
      assert ours[f"{part}_total"] == theirs[f"{part}_total"]
    best = best_thresholds(golds, preds, diffs)
    assert best["best_f1"] == pytest.approx(theirs["best_f1"])
    assert best["best_f1_thresh"] == pytest.approx(theirs["best_f1_thresh"])
    assert best["best_exact_match"] == pytest.approx(theirs["best_exact"])
    assert best["best_exact_match_thresh"] == pytest.approx(theirs["best_exact_thresh"])


def test_best_f1_is_the_official_scripts_on_the_written_predictions(monkeypatch):
  """Where the null won, the written prediction is "" and the best non-null span is lost to
  the official script: the report's best_f1 is the one the script prints from the written
  predictions and null odds (sweeping the non-null spans instead gave another)."""
  golds = {"a": ["cat"], "b": ["dog"], "c": []}
  spans = {"a": "cat", "b": "dog", "c": "eel"}
  written = {"a": "cat", "b": "", "c": ""}            # b and c: the null won
  diffs = {"a": -2.0, "b": 0.5, "c": 1.0}
  monkeypatch.setattr(qa_data, "best_answers", lambda *a: (written, spans, diffs))
  examples = [types.SimpleNamespace(id=k, answers=v) for k, v in golds.items()]
  data = types.SimpleNamespace(task=types.SimpleNamespace(unanswerable=True),
                               examples={"eval": examples}, windows={"eval": None},
                               labeled={"eval": True})
  config = types.SimpleNamespace(qa=types.SimpleNamespace(
      n_best=20, max_answer_length=30, null_score_diff_threshold=0.0))
  report, answers = split_answers(config, data, "eval", {"start_logits": None,
                                                         "end_logits": None})
  official = ref.evaluate_v2(golds, answers["predictions"], answers["null_diffs"])
  assert report["best_f1"] == pytest.approx(official["best_f1"]) == pytest.approx(200 / 3)
  assert report["best_exact_match"] == pytest.approx(official["best_exact"])


# --- windows and the way back ---------------------------------------------------------------------

def long_example(rng, answer_at: int, n_words: int = 60, qid="q") -> qa_data.QAExample:
  words = list(rng.choice(FILLER, size=n_words))
  words[answer_at:answer_at] = ["key:", "Socket-Thread"]
  context = " ".join(words)
  start = context.index("Socket-Thread")
  return qa_data.QAExample(qid, "what is the key?", context, ["Socket-Thread"], [start])


@pytest.mark.parametrize("family", ["bert", "roberta", "xlnet"])
def test_windows_cover_the_context_and_map_back_to_text(family, tok_dirs):
  """A context of many windows: they overlap by doc_stride and cover it; each context token is
  its 'most context' token in exactly one window; the windows that hold the whole answer label
  its tokens, whose characters are the answer; the others label the null position ([CLS] first,
  XLNet's <cls> last). Logits peaked on those labels give back the answer text."""
  tok = TextTokenizer.load(tok_dirs[family])
  rng = np.random.default_rng(0)
  examples = [long_example(rng, 30), long_example(rng, 2, qid="early")]
  w, unaligned = qa_data.encode_windows(tok, family, examples, 40, 8, 10, labels=True)
  assert unaligned == 0
  first_windows = np.flatnonzero(w.example == 0)
  assert len(first_windows) >= 4
  in_context = w.chars[..., 0] >= 0
  # every context token of example 0 is read, and has its most context in exactly one window
  n_tokens = len(tok.encode(examples[0].context))
  covered = {tuple(c) for r in first_windows for c in w.chars[r][in_context[r]]}
  assert len(covered) == n_tokens
  assert w.max_context[first_windows].sum() == n_tokens
  holding, layout = 0, families.get(family).pair_layout
  for r in range(len(w.example)):
    ids = w.arrays["input_ids"][r]
    length = int(w.arrays["attention_mask"][r].sum())
    null = 0 if "cls" in layout.prefix else length - 1
    assert w.null_position[r] == null and ids[null] == tok.cls_id
    s, e = w.arrays["start_positions"][r], w.arrays["end_positions"][r]
    if s == null:
      assert e == null
      continue
    holding += 1
    ex = examples[w.example[r]]
    assert ex.context[w.chars[r, s, 0]:w.chars[r, e, 1]].strip() == "Socket-Thread"
  assert holding >= 2                         # the answer lies in more than one window
  # logits that point at the labels (or at the null position) read the answers back
  start = np.where(np.arange(40) == w.arrays["start_positions"][:, None], 5.0, 0.0)
  end = np.where(np.arange(40) == w.arrays["end_positions"][:, None], 5.0, 0.0)
  predictions, spans, _ = qa_data.best_answers(examples, w, start, end, 20, 30, False, 0.0)
  assert predictions == {"q": "Socket-Thread", "early": "Socket-Thread"} == spans


def test_answer_tokens_and_window_starts():
  offsets = np.array([[0, 3], [4, 7], [7, 8], [9, 14]])      # "abc def. ghijk"
  assert qa_data.answer_tokens(offsets, 4, 8) == (1, 2)
  assert qa_data.answer_tokens(offsets, 5, 6) == (1, 1)      # inside one token
  assert qa_data.answer_tokens(offsets, 20, 22) is None
  assert qa_data.window_starts(10, 4, 3) == [(0, 4), (3, 4), (6, 4)]
  assert qa_data.window_starts(3, 4, 3) == [(0, 3)]
  assert qa_data.window_starts(0, 4, 3) == [(0, 0)]
  # an answer_start off by a few characters finds the nearest occurrence of the text
  ex = qa_data.QAExample("i", "q", "a key b key c", ["key"], [9])
  assert qa_data.aligned_answer(ex) == (8, 11)


def test_null_threshold_decides_unanswerable(tokenizers_dir):
  """v2: no answer when the null score beats the best span by more than the threshold (the
  lowest null score over the windows); v1 always answers."""
  tok = TextTokenizer.load(tokenizers_dir["bert"])
  ex = long_example(np.random.default_rng(1), 30)
  w, _ = qa_data.encode_windows(tok, "bert", [ex], 40, 8, 10, labels=True)
  n = len(w.example)
  start, end = np.zeros((n, 40)), np.zeros((n, 40))
  for r in np.flatnonzero(w.arrays["start_positions"] > 0):   # the answer's windows: 2 + 2
    start[r, w.arrays["start_positions"][r]] = end[r, w.arrays["end_positions"][r]] = 2.0
  start[:, 0] = end[:, 0] = 3.0                                 # null 6 in every window...
  start[n - 1, 0] = 2.5                                         # ...but the last: 5.5
  for threshold, want in ((1.0, ""), (1.5, "Socket-Thread"), (2.5, "Socket-Thread")):
    pred, span, diffs = qa_data.best_answers([ex], w, start, end, 20, 30, True, threshold)
    assert pred["q"] == want and span["q"] == "Socket-Thread"
    assert diffs["q"] == pytest.approx(1.5)
  assert qa_data.best_answers([ex], w, start, end, 20, 30, False, 0.0)[0]["q"] == \
      "Socket-Thread"
  # max_answer_length 1 token: the two-token answer is not a candidate any more
  pred, _, diffs = qa_data.best_answers([ex], w, start, end, 20, 1, True, 0.0)
  assert pred["q"] != "Socket-Thread"


# --- reading --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,task", [("squad/v1.1", "squad"), ("squad/v2.0", "squad_v2")])
def test_squad_by_name_from_tfds(name, task):
  tfds = pytest.importorskip("tensorflow_datasets")
  config = qa_preset.get_config(task)
  with tfds.testing.mock_data(num_examples=7):
    source = tfds.data_source(name, split="validation")
    rows = [source[i] for i in range(len(source))]
    got, splits = qa_data.read_qa_splits(config)
  assert got.tfds_name == name and got.unanswerable == (task == "squad_v2")
  assert set(splits) == {"train", "eval"}                   # SQuAD's test set is hidden
  examples = splits["eval"].examples
  impossible = [bool(r.get("is_impossible", False)) or not len(r["answers"]["text"])
                for r in rows]
  assert len(examples) + splits["eval"].skipped == 7
  assert len(examples) == (7 if task == "squad_v2" else 7 - sum(impossible))
  for row, ex in zip([r for r, i in zip(rows, impossible) if task == "squad_v2" or not i],
                     examples):
    assert (ex.id, ex.question, ex.context) == (row["id"], row["question"], row["context"])
    gold = [] if row.get("is_impossible") else [t for t in row["answers"]["text"] if t.strip()]
    assert ex.answers == list(gold)


def write_squad(path, n, seed, v2=False, length=(20, 40)):
  """SQuAD-format JSON of the span task: the answer is the word after "key:" (v2: 30% of the
  contexts have no key, and the question no answer)."""
  rng = np.random.default_rng(seed)
  paragraphs = []
  for i in range(n):
    words = list(rng.choice(FILLER, size=int(rng.integers(*length))))
    impossible = bool(v2 and rng.random() < 0.3)
    answer = str(rng.choice(ANSWERS))
    if not impossible:
      at = int(rng.integers(len(words) + 1))
      words[at:at] = ["key:", answer]
    context = " ".join(words)
    answers = [] if impossible else [{"text": answer,
                                      "answer_start": context.index("key: ") + 5}]
    paragraphs.append({"context": context, "qas": [{
        "id": f"s{seed}-{i}", "question": "what is the key?", "answers": answers,
        "is_impossible": impossible}]})
  with open(path, "w", encoding="utf-8") as f:
    json.dump({"version": "v2.0" if v2 else "1.1",
               "data": [{"title": "keys", "paragraphs": paragraphs}]}, f)


def test_squad_json_files_and_bad_input(tmp_path):
  write_squad(tmp_path / "t.json", 40, 0, v2=True)
  config = qa_preset.get_config("json")
  config.finetune.train_path = str(tmp_path / "t.json")
  task, splits = qa_data.read_qa_splits(config)
  # v1.1 task: unanswerable questions skipped; validation held out by whole contexts
  n = sum(len(s.examples) for s in splits.values())
  assert n + splits["train"].skipped == 40 and splits["train"].skipped > 5
  assert not {e.context for e in splits["train"].examples} & \
      {e.context for e in splits["eval"].examples}
  config = qa_preset.get_config("json_v2")
  config.finetune.train_path = str(tmp_path / "t.json")
  _, splits = qa_data.read_qa_splits(config)
  assert sum(len(s.examples) for s in splits.values()) == 40
  (tmp_path / "bad.json").write_text('{"version": "1.1"}')
  config.finetune.train_path = str(tmp_path / "bad.json")
  with pytest.raises(Exception, match="is not SQuAD-format JSON"):
    qa_data.read_qa_splits(config)


# --- whole runs -----------------------------------------------------------------------------------

def body_workdir(path, family: str, tokenizer_dir: str):
  """A pretraining workdir (config, tokenizer, a checkpoint at step 0) of a randomly initialised
  tiny body: quicker than pretraining, and enough for the span task."""
  config = family_config(family, **{"model.hidden_size": 64, "model.num_heads": 4,
                                    "model.mlp_dim": 128, "model.num_layers": 2,
                                    # ALBERT: a factorised embedding, as published ones
                                    **({"model.embedding_size": 32} if family == "albert"
                                       else {})})
  tok = TextTokenizer.load(tokenizer_dir)
  mcfg = model_config(config, padded_vocab(config, tok.vocab_size), tok.pad_id)
  params = nnx.to_pure_dict(nnx.state(families.build(mcfg, nnx.Rngs(params=0)), nnx.Param))
  workdirs.save_config(str(path), config)
  tok.save(str(path))
  with checkpoint.make_manager(str(path)) as manager:
    checkpoint.save(manager, 0, {"params": params}, {"tokens_seen": 0})
    manager.wait_until_finished()
  return str(path)


def test_gpt_is_refused_and_bad_configs(tmp_path, tokenizers_dir, capsys):
  gpt = tmp_path / "gpt"
  workdirs.save_config(str(gpt), family_config("gpt"))
  TextTokenizer.load(tokenizers_dir["gpt"]).save(str(gpt))

  def refused(*args):
    capsys.readouterr()
    assert run_cli("finetune", "--workdir", str(tmp_path / "run"), *args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    return err

  err = refused("--config", "qa:squad", "--init-from", str(gpt))
  assert "needs a bidirectional encoder" in err and "bert, roberta, albert, xlnet" in err
  bert = tmp_path / "bert"
  workdirs.save_config(str(bert), family_config("bert"))
  TextTokenizer.load(tokenizers_dir["bert"]).save(str(bert))
  assert "finetune.train_path" in refused("--config", "qa:json", "--init-from", str(bert))
  assert "exceeds model.max_position=128" in refused("--config", "qa:squad", "--init-from",
                                                     str(bert))
  assert "does not exist" in refused("--config", "qa:json", "--init-from", str(bert),
                                     f"--config.finetune.train_path={tmp_path / 'no.json'}",
                                     "--config.data.max_seq_length=128")
  # question answering has no classify group: a classification field is not a field of it
  assert "unknown config field" in refused(
      "--config", "qa:squad", "--init-from", str(bert), "--config.classify.text_field=x")
  # a field of an older plm-jax: one line naming the new one
  assert refused("--config", "qa:squad", "--init-from", str(bert),
                 "--config.classify.epochs=1") == \
      "plm-jax finetune: error: --config.classify.epochs is now --config.finetune.epochs"
  assert "leaves no room" in refused("--config", "qa:squad", "--init-from", str(bert),
                                     "--config.data.max_seq_length=64")
  assert "not one of" in refused("--config", "qa:nope", "--init-from", str(bert))
  assert not (tmp_path / "run").exists()


def finetune_span_task(base, tok_dir, train: int, dev: int, *extra):
  """A tiny BERT fine-tuned on the v2 span task from JSON files: long contexts in windows of 32
  tokens, 30% unanswerable questions."""
  write_squad(base / "train.json", train, 0, v2=True)
  write_squad(base / "dev.json", dev, 1, v2=True)
  body = body_workdir(base / "body", "bert", tok_dir)
  workdir = str(base / "run")
  args = ["finetune", "--config", "qa:json_v2", "--init-from", body, "--workdir", workdir,
          f"--config.finetune.train_path={base / 'train.json'}",
          f"--config.finetune.eval_path={base / 'dev.json'}",
          "--config.data.max_seq_length=32", "--config.qa.max_query_length=8",
          "--config.qa.doc_stride=8", "--config.train.batch_size=32",
          "--config.optim.learning_rate=2e-3", "--config.train.log_every=50", *extra]
  assert run_cli(*args) == 0
  return {"workdir": workdir, "dir": base, "args": args}


@pytest.fixture(scope="module")
def span_run(tmp_path_factory, tokenizers_dir):
  """One epoch of 600 questions, evaluated every 40 steps (about 20 s on two idle cores)."""
  return finetune_span_task(tmp_path_factory.mktemp("qa"), tokenizers_dir["bert"], 600, 100,
                            "--config.finetune.epochs=1", "--config.train.eval_every=40")


@pytest.mark.e2e
def test_span_run_learns_and_is_evaluated_again(span_run, capsys):
  """Well above the baselines: always "no answer" (EM ~30: the unanswerable share) and the first
  context word (~0). The report, the predictions ({id: answer}, the SQuAD script's format) and
  the null odds; evaluate --best --split validation gives the report's numbers; a finished run
  resumes to nothing."""
  workdir = span_run["workdir"]
  report = json.load(open(os.path.join(workdir, "test_report.json")))
  v = report["validation"]
  assert report["metric"] == "f1" and v["total"] == 100, report
  assert v["exact_match"] > 80 and v["f1"] > 80, report
  assert v["HasAns_exact_match"] > 70 and v["NoAns_exact_match"] > 70, report
  assert "best_f1_thresh" in v
  predictions = json.load(open(os.path.join(workdir, "validation_predictions.json")))
  assert len(predictions) == 100 and set(predictions.values()) <= set(ANSWERS) | {""}
  odds = json.load(open(os.path.join(workdir, "validation_null_odds.json")))
  assert set(odds) == set(predictions)
  # the official v2.0 script on the written files prints the report's best_f1 / best_exact
  dev = json.load(open(span_run["dir"] / "dev.json"))
  golds = {qa["id"]: [a["text"] for a in qa["answers"]] for article in dev["data"]
           for p in article["paragraphs"] for qa in p["qas"]}
  official = ref.evaluate_v2(golds, predictions, odds)
  assert official["f1"] == pytest.approx(v["f1"])
  assert official["best_f1"] == pytest.approx(v["best_f1"])
  assert official["best_exact"] == pytest.approx(v["best_exact_match"])
  assert run_cli("evaluate", "--workdir", workdir, "--best", "--split", "validation") == 0
  again = json.load(open(os.path.join(workdir,
                                      f"eval_best_step_{report['best_step']}_validation.json")))
  assert again["exact_match"] == v["exact_match"] and again["f1"] == pytest.approx(v["f1"])
  # resuming the finished run: nothing to do
  assert run_cli(*span_run["args"]) == 0
  assert "nothing to do" in capsys.readouterr().out


@pytest.mark.e2e
def test_exported_span_model_gives_plm_jax_logits(span_run, tmp_path):
  """export-hf --best: BertForQuestionAnswering, given the exported tokenizer's encoding of
  (question, context), gives plm-jax's start / end logits within 1e-4."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  out = str(tmp_path / "hf")
  assert run_cli("export-hf", "--workdir", span_run["workdir"], "--out", out, "--best") == 0
  compare_exported(span_run["workdir"], out, torch, transformers, "BertForQuestionAnswering")


def compare_exported(workdir, out, torch, transformers, kind):
  from plm_jax.inference import load_params
  model, info = transformers.AutoModelForQuestionAnswering.from_pretrained(
      out, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert type(model).__name__ == kind
  hf_tok = transformers.AutoTokenizer.from_pretrained(out)
  ours = load_params(workdir, subdir=checkpoint.BEST_DIR if os.path.isdir(
      os.path.join(workdir, "best")) else checkpoint.CHECKPOINT_DIR, devices=jax.devices()[:1])
  rng = np.random.default_rng(3)
  examples = [long_example(rng, 3, n) for n in (4, 8, 14)]
  w, _ = qa_data.encode_windows(ours.tokenizer, ours.config.model.family, examples, 120, 16,
                                16, labels=False)
  assert len(w.example) == 3                                 # one window each, 3 lengths
  got = ours.module()(w.arrays["input_ids"], w.arrays["segment_ids"],
                      w.arrays["attention_mask"])
  batch = hf_tok([e.question for e in examples], [e.context for e in examples], padding=True,
                 return_tensors="pt")
  with torch.no_grad():
    theirs = model.eval()(**batch)
  mask = batch["attention_mask"].numpy().astype(bool)
  for name in ("start_logits", "end_logits"):
    want = np.asarray(got[name])
    for r in range(3):
      row = getattr(theirs, name)[r].numpy()[mask[r]]
      np.testing.assert_array_equal(batch["input_ids"][r].numpy()[mask[r]],
                                    w.arrays["input_ids"][r, :mask[r].sum()])
      np.testing.assert_allclose(row, want[r, :mask[r].sum()], atol=1e-4, err_msg=name)
    assert np.ptp(want[:, :10]) > 1e-2


@pytest.mark.slow           # 3-5 s each (BERT's is in CI above): over this feature's CI budget
@pytest.mark.parametrize("family", ["roberta", "albert", "xlnet"])
def test_export_of_every_qa_family(family, tmp_path, tok_dirs):
  """RoBERTa, ALBERT and XLNet span models (random, untrained: the export is what is tested)
  reloaded by transformers as *ForQuestionAnswering(Simple) give plm-jax's logits."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  body = body_workdir(tmp_path / "body", family, tok_dirs[family])
  run = tmp_path / "run"
  config = qa_preset.get_config("json")
  from plm_jax.finetune.run import with_body_of
  from plm_jax.inference import fit_to_devices
  config = fit_to_devices(with_body_of(config, workdirs.load_config(body)))
  with config.unlocked():
    config.finetune.train_path = "train.json"             # never read: no training here
    config.data.max_seq_length, config.qa.max_query_length = 120, 16
  tok = TextTokenizer.load(body)
  mcfg = model_config(config, padded_vocab(config, tok.vocab_size), tok.pad_id)
  rng = np.random.default_rng(0)
  # biases and LayerNorms moved off their initial values, matrices scaled up: a swapped or
  # transposed tensor cannot pass
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: np.asarray(x) + 0.1 * rng.standard_normal(np.shape(x)).astype(np.float32)
      if p[-1].key.endswith("bias") or p[-1].key == "scale" else np.asarray(x) * 3,
      nnx.to_pure_dict(nnx.state(families.build(mcfg, nnx.Rngs(params=1)), nnx.Param)))
  workdirs.save_config(str(run), config)
  tok.save(str(run))
  with checkpoint.make_manager(str(run)) as manager:
    checkpoint.save(manager, 1, {"params": params}, {"step": 1})
    manager.wait_until_finished()
  out = str(tmp_path / "hf")
  assert run_cli("export-hf", "--workdir", str(run), "--out", out) == 0
  kind = {"roberta": "RobertaForQuestionAnswering", "albert": "AlbertForQuestionAnswering",
          "xlnet": "XLNetForQuestionAnsweringSimple"}[family]
  compare_exported(str(run), out, torch, transformers, kind)
