"""`plm-jax finetune --config seq2seq:TASK`: a GPT language model fine-tuned on prompt ->
completion pairs (translation, summarisation, ...), the loss on the completions only; each
evaluation decodes validation prompts with the key/value cache (greedy, sampling or beam
search) and scores them (sacreBLEU, ROUGE); the best checkpoint by the task's metric is kept.

Workdir of a generation fine-tuning run (as a classifier's, plm_jax/finetune/run.py):
  config.json, tokenizer.json, checkpoints/<step>/, best/<step>/, metrics.jsonl, tensorboard/
  test_report.json                      loss and scores of the best checkpoint (validation, test)
  validation_predictions.jsonl          {"id", "prompt", "reference", "prediction"} per record
  test_predictions.jsonl                (when the task has a test split)
The model stays a plain GPT language model: `plm-jax generate` and `export-hf` take it as is.
"""

import json
import os
import time

import jax

from plm_jax import workdir as workdirs
from plm_jax.data import loader
from plm_jax.data.pipeline import PreparedData
from plm_jax.data.tokenizer import TextTokenizer
from plm_jax.errors import ConfigError
from plm_jax.finetune.classify.data import EVAL, TEST, TRAIN
from plm_jax.finetune.run import (Downstream, Kind, refuse_other_data, resolve_schedule,
                                  start_config as run_start_config)
from plm_jax.finetune.seq2seq import data as gen_data
from plm_jax.finetune.seq2seq.metrics import generation_metrics
from plm_jax.finetune.seq2seq.tasks import best_metric, gen_task_of, require_decoder
from plm_jax.models.generate import BeamConfig, SamplingConfig, beam_search, generate
from plm_jax.finetune.predict import write_examples
from plm_jax.inference import load_params
from plm_jax.run import checkpoint
from plm_jax.run.metrics_writer import console, format_metrics
from plm_jax.trainer import Trainer, evaluate_params

SPLIT_NAMES = {EVAL: "validation", TEST: "test", TRAIN: "train"}


# --- the config: the task's fields over the body's architecture ------------------------------------

def start_config(config, workdir: str, init_from: str | None, found: workdirs.Found):
  """(config, tokenizer): the GPT's architecture and tokenizer (run.start_config: from
  --init-from, which must hold a decoder, or from the workdir that continues), with the
  task's length cut to the model's positions."""
  config, tokenizer = run_start_config(config, workdir, init_from, found,
                                       check_body=require_decoder)
  with config.unlocked():
    if config.data.max_seq_length > config.model.max_position:
      # the task's default length, for a model with fewer positions (a small pretraining run)
      console(f"data.max_seq_length {config.data.max_seq_length} -> "
              f"{config.model.max_position}: the model's positions")
      config.data.max_seq_length = config.model.max_position
  return config, tokenizer


def load_task_data(config, tokenizer, workdir: str, found: workdirs.Found
                   ) -> dict[str, gen_data.Encoded]:
  """The task's splits; sets the schedule (epochs -> steps) in `config`."""
  t0 = time.time()
  data = gen_data.load(config, tokenizer)
  refuse_other_data(config, workdir, found)
  rows = len(data[TRAIN].rows["tokens"])
  resolve_schedule(config, rows)                 # epochs counted in packed rows
  console(f"data: {config.finetune.task} ("
          + ", ".join(f"{len(e.prompts):,} {s} from {e.pairs.where}" for s, e in data.items())
          + f"); {rows:,} packed train rows of {config.data.max_seq_length} tokens; skipped "
          + ", ".join(f"{e.pairs.skipped} {s}" for s, e in data.items()) + "; truncated "
          + ", ".join(f"{e.truncated} {s}" for s, e in data.items())
          + f"; {time.time() - t0:.1f}s")
  return data


def prepared(tokenizer: TextTokenizer, data: dict[str, gen_data.Encoded],
             eval_split: str) -> PreparedData:
  """The loader's view: the train rows (if read) and one split's rows served as "eval"."""
  train = data[TRAIN] if TRAIN in data else data[eval_split]
  return PreparedData(tokenizer, "seq2seq", [train.rows], [1.0], data[eval_split].rows, None,
                      [])


def whole_model(trainer: Trainer, init_from: str, devices) -> dict:
  """A train state of --init-from's latest parameters, all of them (the LM head is GPT's tied
  embedding), with a new optimizer state."""
  body = load_params(init_from, devices=devices)
  console(f"initialised from {init_from} @ step {body.step}: the whole language model")
  return trainer.state_from_params(body.params)


# --- decoding and scores ---------------------------------------------------------------------------

def decode(module, tokenizer: TextTokenizer, prompts: list[list[int]], config) -> list[str]:
  """The completions of `prompts` (text, without <eos>), decoded as seq2seq.decode says, in
  batches of seq2seq.decode_batch (the last one padded: one compiled shape)."""
  g = config.seq2seq
  eos = tokenizer.eos_id
  size = min(g.decode_batch, len(prompts))
  out = []
  for start in range(0, len(prompts), size):
    chunk = prompts[start:start + size]
    padded = chunk + [chunk[-1]] * (size - len(chunk))
    if g.decode == "beam":
      rows = beam_search(module, padded, BeamConfig(
          g.beam_size, g.max_new_tokens, g.length_penalty, eos,
          repetition_penalty=g.repetition_penalty, no_repeat_ngram_size=g.no_repeat_ngram_size))
    else:
      sampled = g.decode == "sample"
      rows = generate(module, padded, SamplingConfig(
          max_new_tokens=g.max_new_tokens, temperature=g.temperature if sampled else 0.0,
          top_k=g.top_k, top_p=g.top_p, seed=g.seed + start, eos_id=eos,
          repetition_penalty=g.repetition_penalty, no_repeat_ngram_size=g.no_repeat_ngram_size))
    out += [tokenizer.decode([t for t in r if t != eos]).strip() for r in rows[:len(chunk)]]
  return out


def split_report(trainer: Trainer, tokenizer: TextTokenizer, params, config,
                 encoded: gen_data.Encoded, batches: loader.Batches, examples: int
                 ) -> tuple[dict, list[dict]]:
  """(report, predictions) of one split: the loss over all of its rows, and the scores of the
  first `examples` records decoded (0: none; the predictions are those records')."""
  metrics = evaluate_params(trainer, params, batches, batches.eval_steps(0))
  report = {"examples": len(encoded.prompts), **metrics}
  n = min(examples, len(encoded.prompts))
  if n <= 0:
    return report, []
  budget = config.model.max_position - config.seq2seq.max_new_tokens
  prompts = gen_data.decode_prompts(tokenizer, gen_task_of(config), encoded, budget)[:n]
  predictions = decode(trainer.model(params), tokenizer, prompts, config)
  references = encoded.pairs.targets[:n]
  report.update(generation_metrics(predictions, references))
  report["decoded"] = n
  rows = [{"id": encoded.pairs.ids[i], "prompt": tokenizer.decode(prompts[i]),
           "reference": references[i], "prediction": predictions[i]} for i in range(n)]
  return report, rows


def _all(examples: int) -> int:
  """seq2seq.report_examples: 0 = the whole split."""
  return examples if examples > 0 else 1 << 62


def write_predictions(path: str, rows: list[dict]) -> None:
  if jax.process_index() != 0:
    return
  with open(path, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")


def final_report(workdir, config, trainer, tokenizer, data, best_step: int, metric: str
                 ) -> dict:
  """The best checkpoint on the validation and test splits: test_report.json and the
  predictions files."""
  with checkpoint.make_manager(workdir, read_only=True, subdir=checkpoint.BEST_DIR) as manager:
    params = checkpoint.restore(manager, best_step, trainer.abstract_state,
                                trainer.state_shardings, params_only=True)["params"]
  report = {"workdir": os.path.abspath(workdir), "task": config.finetune.task,
            "best_step": best_step, "metric": metric, "decode": decode_settings(config)}
  for split in (EVAL, TEST):
    if split not in data or not data[split].prompts:
      continue
    name = SPLIT_NAMES[split]
    batches = loader.Batches(config, prepared(tokenizer, data, split), loader.EVAL,
                             mesh=trainer.mesh)
    report[name], rows = split_report(trainer, tokenizer, params, config, data[split], batches,
                                      _all(config.seq2seq.report_examples))
    write_predictions(os.path.join(workdir, f"{name}_predictions.jsonl"), rows)
    if rows:
      write_examples(workdir, name, {"predictions": [r["prediction"] for r in rows],
                                     "references": [r["reference"] for r in rows]})
    console(f"{name} ({data[split].pairs.where}) @ best step {best_step}: "
            + format_metrics(report[name], trainer.objective.eval_keys))
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "test_report.json"), "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)
  return report


def decode_settings(config) -> dict:
  g = config.seq2seq
  out = {"decode": g.decode, "max_new_tokens": g.max_new_tokens}
  if g.decode == "beam":
    out.update(beam_size=g.beam_size, length_penalty=g.length_penalty)
  elif g.decode == "sample":
    out.update(temperature=g.temperature, top_k=g.top_k, top_p=g.top_p, seed=g.seed)
  if g.repetition_penalty != 1.0:
    out.update(repetition_penalty=g.repetition_penalty)
  if g.no_repeat_ngram_size > 0:
    out.update(no_repeat_ngram_size=g.no_repeat_ngram_size)
  return out


def evaluate_split(loaded, split: str, name: str, label: str) -> tuple[dict, object]:
  """Loss and scores of a restored model on a split (its decode settings first), and the
  writer of its predictions, predictions_[best_]step_N_SPLIT.jsonl (Kind.evaluate)."""
  data = gen_data.load(loaded.config, loaded.tokenizer, (split,))
  if split not in data:
    raise ConfigError(f"the task {loaded.config.finetune.task!r} has no {name} split here "
                      "(files: give finetune.test_path)")
  batches = loader.Batches(loaded.config, prepared(loaded.tokenizer, data, split), loader.EVAL,
                           mesh=loaded.trainer.mesh)
  report, rows = split_report(loaded.trainer, loaded.tokenizer, loaded.params, loaded.config,
                              data[split], batches,
                              _all(loaded.config.seq2seq.report_examples))
  console(f"{label}: " + format_metrics(report, loaded.trainer.objective.eval_keys))

  def write(workdir: str, stem: str) -> None:          # predictions_ beside eval_
    write_predictions(os.path.join(workdir, "predictions_" + stem[len("eval_"):] + ".jsonl"),
                      rows)
  return {"decode": decode_settings(loaded.config), **report}, write


class Generation(Kind):
  """Generation fine-tuning of a GPT: prompt -> completion, the loss on the completion; scored
  on decoded text (BLEU, ROUGE, exact match)."""

  name = "seq2seq"

  def start_config(self, config, workdir, init_from, found):
    return start_config(config, workdir, init_from, found)

  def load(self, config, tokenizer, workdir, found):
    return load_task_data(config, tokenizer, workdir, found)

  def metric(self, config, data) -> str:
    return best_metric(config)

  def prepared(self, data, tokenizer):
    return prepared(tokenizer, data, EVAL)

  def init(self, trainer, config, devices) -> dict:
    return whole_model(trainer, config.finetune.init_from, devices)

  def describe(self, config, data, metric: str) -> str:
    return (f"{config.model.family} {config.model.size} language model fine-tuned on "
            f"{config.finetune.task}; {config.train.steps} steps ({config.finetune.epochs:g} "
            f"epochs), best by {metric}; {config.seq2seq.decode} decoding")

  def predictor(self, trainer):
    return trainer          # decoding needs the trainer (its model and mesh), not logits

  def report(self, predictor, params, batches, config, tokenizer, data) -> dict:
    return split_report(predictor, tokenizer, params, config, data[EVAL], batches,
                        config.seq2seq.eval_examples)[0]

  def final(self, workdir, config, trainer, predictor, tokenizer, data, best_step, metric):
    return final_report(workdir, config, trainer, tokenizer, data, best_step, metric)

  def evaluate_split(self, loaded, split, name, label):
    return evaluate_split(loaded, split, name, label)

  def resampled_metric(self, records, indices, metric):
    # corpus metrics (BLEU) too: recomputed whole on the resampled predictions
    return float(generation_metrics([records["predictions"][i] for i in indices],
                                    [records["references"][i] for i in indices])[metric])

  def compare_stage(self) -> Downstream:
    return Downstream(
        "generate", "generation", "seq2seq", {"unshuffle": "jsonl"}, self.finetune,
        lambda family: family.decoder, lambda config: gen_task_of(config).metric,
        ("bleu", "rougeL", "exact_match", "perplexity"),
        "generation fine-tuning needs a decoder", _compare_fields, perplexity=True,
        formats=((".jsonl", "jsonl"),), own_fields=("source_field", "target_field"),
        records=self.example_records, resampled=self.resampled_metric)


def _compare_fields(s, config) -> None:
  """A compare stage's own fields (s) into its generation config."""
  config.seq2seq.eval_examples = 0            # the best checkpoint by validation loss
  config.seq2seq.report_examples = s.report_examples
  config.seq2seq.max_new_tokens = s.max_new_tokens


GENERATION = Generation()
