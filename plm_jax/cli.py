"""The `plm-jax` command: a table of commands, each its flags and one library function.

  plm-jax COMMAND [--flag VALUE ...] [--config FILE:ARG] [--config.GROUP.FIELD=VALUE ...]
  plm-jax COMMAND --help        that command's flags
  plm-jax --help | --version

Flags are spelt with dashes or underscores alike (`--eval-steps 5` or `--eval_steps=5`). A
command whose config comes from a file takes `--config configs/bert.py:tiny`; any field of it can
be overridden with `--config.optim.learning_rate=3e-4` (a misspelt field is an error), and
`plm-jax config --config FILE:ARG` lists every field with its value.
"""

import contextlib
import dataclasses
import json
import logging as std_logging
import os
import sys
import threading
import traceback
import types
from typing import Callable

import jax
import ml_collections
from absl import flags, logging
from ml_collections import config_flags

from plm_jax import __version__, workdir as workdirs
from plm_jax.hardware import accelerator, distributed, topology
from plm_jax import configs as presets
from plm_jax.sizing.bench import bench, bench_decode
from plm_jax.compare import compare
from plm_jax.configlib import MOVED
from plm_jax.commands.data import data_bench, data_prepare, tokenizer_train
from plm_jax.errors import PlmJaxError
from plm_jax.commands.evaluate import evaluate
from plm_jax.finetune.kinds import finetune
from plm_jax.models.generate import SamplingConfig
from plm_jax.hf.workdir import export_hf, import_hf
from plm_jax.inference import (fill_mask, filled_text, fit_to_devices, generate_text,
                               load_params, untrained_heads)
from plm_jax.sizing.plan import plan
from plm_jax.commands.pretrain import train
from plm_jax.run import checkpoint
from plm_jax.run.metrics_writer import console
from plm_jax.run.plots import plot_runs
from plm_jax.run import supervisor
from plm_jax.run.stopping import OutsideTheLoop, RunStopped
from plm_jax.hardware.topology import TOPOLOGIES


class UsageError(Exception):
  """Something wrong on the command line (a missing flag, an unreadable --config)."""


@dataclasses.dataclass(frozen=True)
class Flag:
  name: str                    # spelt with dashes: --max-new-tokens
  kind: str                    # string, integer, float, bool or enum
  help: str
  default: object = None
  required: bool = False
  choices: tuple[str, ...] = ()

  @property
  def key(self) -> str:
    return self.name.replace("-", "_")


# Where a command's config comes from.
NO_CONFIG = ""
FILE = "file"                       # --config FILE:ARG (required)
FILE_OR_WORKDIR = "file|workdir"    # --config FILE:ARG, else the one saved in --workdir
WORKDIR = "workdir"                 # the one saved in --workdir; --config.* overrides it


@dataclasses.dataclass(frozen=True)
class Command:
  name: str
  summary: str
  run: Callable                # (config, args) -> result
  flags: tuple[Flag, ...] = ()
  config: str = NO_CONFIG
  distributed: bool = False    # may span processes (jax.distributed starts before jax is used)
  example: str = ""
  positional: str = ""         # the attribute that takes the arguments after the flags
  compile_cache: bool = True   # load compiled steps from the persistent cache (bench times a
                               # real compile: off)
  resumable: bool = False      # trains in --workdir: a SIGTERM at any moment exits 75 (resume)


def _workdir(help_text="the run directory: checkpoints, logs, tokenizer") -> Flag:
  return Flag("workdir", "string", help_text, required=True)


STEP = Flag("step", "integer", "checkpoint step (default: the latest)")
BEST = Flag("best", "bool", "fine-tuned runs: the best checkpoint (best/), not the latest", False)
DISTRIBUTED_FLAGS = (
    Flag("coordinator", "string", "multi-process: HOST:PORT of process 0's coordinator (or "
         f"{distributed.ENV_COORDINATOR})"),
    Flag("num-processes", "integer", "multi-process: processes in the run"),
    Flag("process-id", "integer", "multi-process: this process's index"),
    Flag("heartbeat-timeout", "integer", "multi-process: seconds without a heartbeat after "
         f"which the others stop with an error (default {distributed.DEFAULT_HEARTBEAT_S})"),
)


# --- what each command runs ----------------------------------------------------------------------

def _print_config(config, a):
  print(config)
  return config


def _evaluate(config, a):
  return evaluate(a.workdir, step=a.step, eval_steps=a.eval_steps, config=config, best=a.best,
                  split=a.split)


def _generate(config, a):
  prompts = [a.prompt] if a.prompt is not None else []
  if a.prompts_file:
    try:
      with open(a.prompts_file, encoding="utf-8") as f:
        prompts += [line.rstrip("\n") for line in f if line.strip()]
    except OSError as e:
      raise UsageError(f"cannot read --prompts-file: {e}") from None
  if not prompts:
    raise UsageError("give --prompt TEXT or --prompts-file FILE")
  cfg = SamplingConfig(max_new_tokens=a.max_new_tokens, temperature=a.temperature,
                       top_k=a.top_k, top_p=a.top_p, seed=a.seed,
                       repetition_penalty=a.repetition_penalty,
                       no_repeat_ngram_size=a.no_repeat_ngram_size)
  outputs = generate_text(load_params(a.workdir, a.step), prompts, cfg, a.num_samples)
  for prompt, samples in zip(prompts, outputs):
    for sample in samples:
      print(f"{prompt}\033[1m{sample}\033[0m" if sys.stdout.isatty() else prompt + sample)
  if a.json:
    print(json.dumps([{"prompt": p, "samples": s} for p, s in zip(prompts, outputs)]))
  return outputs


def _fill_mask(config, a):
  restored = load_params(a.workdir, a.step)
  untrained = [h for h in untrained_heads(restored, a.workdir) if h.startswith("mlm")]
  if untrained:
    console(f"warning: the masked-LM head of {a.workdir} was never trained (imported without "
            f"it: {', '.join(untrained)}); its proposals are random until the model is "
            "pretrained further (plm-jax train --workdir ...)")
  results = fill_mask(restored, a.text, a.top_k)
  filled = filled_text(restored, a.text, results)
  print(filled)
  for i, candidates in enumerate(results, 1):
    print(f"  mask {i}: " + ", ".join(f"{t} {p:.4f}" for t, p in candidates))
  if a.json:
    print(json.dumps({"text": a.text, "filled": filled,
                      "masks": [[{"token": t, "prob": p} for t, p in c] for c in results]}))
  return results


def _ints(text: str, flag: str) -> list[int]:
  try:
    return [int(x) for x in text.split(",")]
  except ValueError:
    raise UsageError(f"--{flag} {text!r} is not a comma-separated list of integers") from None


COMMANDS = {c.name: c for c in (
    Command("train", "pretrain, or resume from the workdir's latest checkpoint",
            lambda config, a: train(config, a.workdir), (_workdir(),), FILE_OR_WORKDIR, True,
            "plm-jax train --config configs/bert.py:tiny --workdir runs/bert-tiny",
            resumable=True),
    Command("finetune", "fine-tune a pretrained body with a new classification, tagging or "
            "question-answering head, or a GPT on prompt -> completion pairs (seq2seq:TASK)",
            lambda config, a: finetune(config, a.workdir, init_from=a.init_from),
            (_workdir(), Flag("init-from", "string", "the pretraining (or import-hf) workdir "
                              "whose latest checkpoint the body starts from")), FILE, True,
            "plm-jax finetune --config configs/classify.py:builtin --init-from runs/bert-tiny "
            "--workdir runs/builtin", resumable=True),
    Command("evaluate", "restore a checkpoint on the devices present and print its metrics",
            _evaluate,
            (_workdir(), STEP,
             Flag("eval-steps", "integer", "eval batches (default: the run's "
                  "train.eval_steps; 0 = the whole eval split)"),
             BEST,
             Flag("split", "enum", "fine-tuned runs: the split to evaluate", "validation",
                  choices=("validation", "test", "train"))), WORKDIR, True,
            "plm-jax evaluate --workdir runs/bert-tiny --config.mesh.tensor=2"),
    Command("compare", "pretrain the families at matched compute, fine-tune each on the same "
            "tasks and seeds, and write DIR/report.md with its plots (a rerun continues)",
            lambda config, a: compare(config, a.workdir),
            (_workdir("the comparison's directory: a workdir per family, seed and stage, "
                      "report.md, plots/"),), FILE, False,
            "plm-jax compare --config compare:tiny --workdir runs/compare", resumable=True),
    Command("plan", "memory, FLOPs and step time of a config on a topology, without it",
            lambda config, a: plan(config, a.topology, a.devices, a.mfu, a.hbm_gib,
                                   a.peak_tflops, a.compile),
            (Flag("topology", "enum", "hardware to plan for", choices=tuple(TOPOLOGIES)),
             Flag("compile", "bool", "TPU topologies: also compile the step for it here (XLA's "
                  "TPU compiler from libtpu) and print the estimate beside the compiled "
                  "memory; a refusal's proposals are compiled too", False),
             Flag("devices", "integer", "or: N devices of one host"),
             Flag("mfu", "float", "model FLOPs utilisation assumed for the step time", 0.4),
             Flag("hbm-gib", "float", "memory per device (overrides the topology's)", 0.0),
             Flag("peak-tflops", "float", "peak bf16 TFLOP/s per device (overrides)", 0.0)),
            FILE, example="plm-jax plan --config configs/gpt.py:1.5b,mesh=tpu-v5e-256 "
            "--topology v5e-256 --config.optim.grad_accum_steps=2"),
    Command("bench", "compile and time the train step on synthetic batches", lambda config, a:
            bench(config, compile_only=a.compile_only, profile=a.profile,
                  topology_name=a.topology or ""),
            (Flag("topology", "enum", "with --compile-only: compile for this TPU topology "
                  "ahead of time, on this host (needs libtpu: pip install 'plm-jax[tpu]')",
                  choices=tuple(TOPOLOGIES)),
             Flag("compile-only", "bool", "print compile time and the compiled step's memory, "
                  "run no step (any size, on a CPU too)", False),
             Flag("profile", "string", "after timing, trace 3 steps into this directory "
                  "(view with TensorBoard's profile plugin or Perfetto)", "")), FILE, True,
            "plm-jax bench --config configs/gpt.py:124m", compile_cache=False),
    Command("bench-decode", "decode tokens/s with and without the key/value cache",
            lambda config, a: bench_decode(config, _ints(a.batch_sizes, "batch-sizes"),
                                           _ints(a.prompt_lengths, "prompt-lengths"),
                                           a.new_tokens),
            (Flag("batch-sizes", "string", "comma-separated", "1,32"),
             Flag("prompt-lengths", "string", "comma-separated", "16,96"),
             Flag("new-tokens", "integer", "tokens generated per run", 32)), FILE,
            example="plm-jax bench-decode --config configs/gpt.py:tiny"),
    Command("tokenizer train", "train a WordPiece, byte-level BPE or Unigram vocabulary on files",
            lambda config, a: tokenizer_train(a.input, a.kind, a.vocab_size, a.out,
                                              lowercase=a.lowercase, text_field=a.text_field),
            (Flag("input", "string", "glob of text (.txt/.gz) or JSON-lines (.jsonl) files",
                  required=True),
             Flag("kind", "enum", "wordpiece (BERT), bpe (GPT-2), roberta-bpe or unigram "
                  "(XLNet's SentencePiece-style)", required=True,
                  choices=("wordpiece", "bpe", "roberta-bpe", "unigram")),
             Flag("vocab-size", "integer", "entries in the vocabulary", required=True),
             Flag("out", "string", "directory for tokenizer.json", required=True),
             Flag("lowercase", "bool", "WordPiece, Unigram: lowercase (and strip accents)", True),
             Flag("text-field", "string", "JSON lines: the field holding the text", "text")),
            example="plm-jax tokenizer train --input 'corpus/*.txt' --kind wordpiece "
            "--vocab-size 30522 --out tok/"),
    Command("data prepare", "tokenise the configured sources once into shards",
            lambda config, a: data_prepare(config, a.out),
            (Flag("out", "string", "directory for the prepared shards", required=True),), FILE,
            example="plm-jax data prepare --config configs/bert.py:base --out data/bert"),
    Command("data bench", "tokenisation and loader throughput on this machine",
            lambda config, a: data_bench(config, a.batches),
            (Flag("batches", "integer", "batches to time", 50),), FILE,
            example="plm-jax data bench --config configs/bert.py:tiny"),
    Command("import-hf", "turn a local Hugging Face model directory into a workdir",
            lambda config, a: import_hf(a.hf_dir, a.workdir),
            (Flag("hf-dir", "string", "a Hugging Face model directory, or a model id "
                  "(org/name) in the local Hugging Face cache", required=True),
             _workdir("the new plm-jax workdir")),
            example="plm-jax import-hf --hf-dir path/to/bert --workdir runs/imported"),
    Command("export-hf", "write a checkpoint (a fine-tuned classifier's too) as a directory "
            "transformers loads",
            lambda config, a: export_hf(a.workdir, a.out, a.step, a.best, a.overwrite),
            (_workdir("the run to export"),
             Flag("out", "string", "directory to write the transformers model to (new or "
                  "empty)", required=True), STEP, BEST,
             Flag("overwrite", "bool", "write into a non-empty --out, over the files of the "
                  "same names", False)),
            example="plm-jax export-hf --workdir runs/bert-tiny --out hf/bert-tiny"),
    Command("generate", "continue prompts with a GPT model (key/value cache)", _generate,
            (_workdir("the run to restore"), STEP,
             Flag("prompt", "string", "text to continue"),
             Flag("prompts-file", "string", "a file of prompts, one per line (batched)"),
             Flag("max-new-tokens", "integer", "tokens to generate", 32),
             Flag("temperature", "float", "0 = greedy", 0.0),
             Flag("top-k", "integer", "sample from the k best tokens (0 = all)", 0),
             Flag("top-p", "float", "nucleus sampling mass", 1.0),
             Flag("seed", "integer", "sampling seed", 0),
             Flag("repetition-penalty", "float", "> 1: tokens already in the text are less "
                  "likely (transformers' repetition_penalty)", 1.0),
             Flag("no-repeat-ngram-size", "integer", "> 0: no n-gram of this size twice "
                  "(transformers' no_repeat_ngram_size)", 0),
             Flag("num-samples", "integer", "continuations per prompt", 1),
             Flag("json", "bool", "also print the results as one JSON line", False)),
            example="plm-jax generate --workdir runs/gpt-tiny --prompt 'Return the'"),
    Command("fill-mask", "the most likely tokens for each mask of a text (encoders)",
            _fill_mask,
            (_workdir("the run to restore"), STEP,
             Flag("text", "string", "text with one or more mask tokens", required=True),
             Flag("top-k", "integer", "tokens printed per mask", 5),
             Flag("json", "bool", "also print the results as one JSON line", False)),
            example="plm-jax fill-mask --workdir runs/bert-tiny --text 'the [MASK] of a list'"),
    Command("plot", "draw one metric of one or more runs into one PNG (train: lines, eval: "
            "points)", lambda config, a: console(f"wrote {plot_runs(a.workdirs, a.out, a.metric)}"),
            (Flag("out", "string", "the PNG file to write", "curves.png"),
             Flag("metric", "string", "the metric to draw (as in metrics.jsonl)", "loss")),
            positional="workdirs",
            example="plm-jax plot runs/bert-tiny runs/xlnet-tiny --out compare.png"),
    Command("config", "print every field of a config (a file's, or a workdir's) with its value",
            _print_config, (Flag("workdir", "string", "print this run's saved config"),),
            FILE_OR_WORKDIR, example="plm-jax config --config configs/bert.py:base"),
)}


# --- parsing -------------------------------------------------------------------------------------

def _define(command: Command, fv: flags.FlagValues) -> None:
  for f in command.flags + (DISTRIBUTED_FLAGS if command.distributed else ()):
    kwargs = dict(flag_values=fv)
    if f.kind == "enum":
      flags.DEFINE_enum(f.name, f.default, list(f.choices), f.help, **kwargs)
    else:
      getattr(flags, f"DEFINE_{f.kind}")(f.name, f.default, f.help, **kwargs)


def _normalise(argv: list[str], command: Command) -> list[str]:
  """--eval_steps=5 -> --eval-steps=5 for the command's own flags (config fields keep their
  underscores)."""
  names = {f.name for f in command.flags + DISTRIBUTED_FLAGS}
  names |= {f"no{f.name}" for f in command.flags if f.kind == "bool"}
  out = []
  for i, arg in enumerate(argv):
    if arg.startswith("--") and not arg.startswith("--config"):
      name, eq, value = arg[2:].partition("=")
      if name.replace("_", "-") in names:
        arg = f"--{name.replace('_', '-')}{eq}{value}"
    elif arg.startswith("--config="):
      arg = "--config=" + presets.resolve(arg[len("--config="):])
    elif i and argv[i - 1] == "--config":
      arg = presets.resolve(arg)          # a preset's name: its packaged file
    out.append(arg)
  return out


def _first_pass(command: Command, argv: list[str]) -> flags.FlagValues:
  """The command's own flags (e.g. --workdir), read before the config is defined."""
  fv = flags.FlagValues()
  _define(command, fv)
  fv(argv, known_only=True)
  return fv


def _define_config(command: Command, fv: flags.FlagValues, early: flags.FlagValues,
                   argv: list[str]) -> None:
  """--config: a file, or the config saved in --workdir (with --config.* overrides)."""
  workdir = early["workdir"].value if "workdir" in early else None
  has_file = any(a == "--config" or a.startswith("--config=") for a in argv)
  saved = bool(workdir) and workdirs.has_config(workdir)
  # sys_argv: the overrides are read from these arguments (not sys.argv), so main() can be
  # called with any argv, as the tests do.
  if command.config == WORKDIR or (command.config == FILE_OR_WORKDIR and not has_file and saved):
    if not saved:
      return                   # evaluate of a missing workdir: its own error names the problem
    config = workdirs.load_config(workdir)
    if command.config == WORKDIR:
      if not any(a.startswith("--config.") for a in argv):
        return                 # evaluate restores onto FSDP over the devices present
      config = fit_to_devices(config)
    config_flags.DEFINE_config_dict("config", config, "the workdir's config", flag_values=fv,
                                    lock_config=True, sys_argv=argv)
  elif command.config in (FILE, FILE_OR_WORKDIR):
    _check_config_file(argv)
    config_flags.DEFINE_config_file("config", None, "config file[:arg], e.g. "
                                    "configs/bert.py:tiny", flag_values=fv, lock_config=True,
                                    sys_argv=argv)


CONFIG_FILE_HELP = ("a config file is Python whose get_config(arg) returns an "
                    "ml_collections.ConfigDict, as plm_jax/configs/*.py do")


def _check_config_file(argv: list[str]) -> None:
  """Runs the --config file's get_config once as ml_collections will, so that a mistake in it
  (a syntax error, an exception, no get_config, a value that is not a ConfigDict) is one line
  naming the file and line rather than a traceback from inside the flag parser."""
  spec = next((a[len("--config="):] if a.startswith("--config=") else argv[i + 1]
               for i, a in enumerate(argv) if a.startswith("--config=") or
               (a == "--config" and i + 1 < len(argv))), None)
  path, _, arg = (spec or "").partition(":")
  if not os.path.isfile(path):
    return                          # ml_collections' own error names a missing file
  try:
    with open(path, encoding="utf-8") as f:
      code = compile(f.read(), path, "exec")
  except SyntaxError as e:
    raise UsageError(f"--config {path}, line {e.lineno}: {e.msg}; fix that line "
                     f"({CONFIG_FILE_HELP})") from None
  except (OSError, ValueError) as e:
    raise UsageError(f"--config {path} cannot be read ({e}); {CONFIG_FILE_HELP}") from None
  module = types.ModuleType("plm_jax_config_check")
  module.__file__ = path
  try:
    exec(code, module.__dict__)  # noqa: S102 - the user's own config file, run as --config runs it
    if not callable(getattr(module, "get_config", None)):
      raise UsageError(f"--config {path} defines no get_config; {CONFIG_FILE_HELP}")
    config = module.get_config(*([arg] if arg else []))
  except (UsageError, PlmJaxError):
    raise
  except Exception as e:  # noqa: BLE001 - whatever the user's file raises, named with its line
    lines = [frame.lineno for frame in traceback.extract_tb(e.__traceback__)
             if os.path.abspath(frame.filename) == os.path.abspath(path)]
    where = f", line {lines[-1]}" if lines else ""
    raise UsageError(f"--config {path}{where}: {type(e).__name__}: {e}; fix the file "
                     f"({CONFIG_FILE_HELP})") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise UsageError(f"--config {path}: get_config({arg!r}) returned {type(config).__name__} "
                     f"{str(config)[:40]}, not an ml_collections.ConfigDict; return one (e.g. "
                     "plm_jax.configlib.make_config(...), as plm_jax/configs/*.py do)")


def _parse(command: Command, fv: flags.FlagValues, argv: list[str]) -> list[str]:
  try:
    rest = fv(argv)
  except (AttributeError, KeyError) as e:
    # ml_collections raises these for an override of a field the locked config lacks.
    moved = [a.partition("=")[0][len("--config."):] for a in argv if a.startswith("--config.")]
    moved = [field for field in moved if field in MOVED]
    if moved:                    # a field of an older plm-jax: the one that replaced it
      raise UsageError(f"--config.{moved[0]} is now --config.{MOVED[moved[0]]}") from None
    message = str(e.args[0] if e.args else e).strip("'\"").replace("\\n", "; ").replace(
        "\n", "; ").replace("\\'", "").replace("'", "")
    raise UsageError(f"unknown config field in a --config.<field> override: {message}; list "
                     f"the fields with `plm-jax config --config FILE:ARG`") from None
  if len(rest) > 1 and not command.positional:
    raise UsageError(f"unexpected arguments {rest[1:]}")
  return rest[1:]


def _config(command: Command, fv: flags.FlagValues):
  if "config" not in fv:
    if command.config == FILE_OR_WORKDIR:
      raise UsageError("--config is required, e.g. --config configs/bert.py:tiny (or a "
                       "--workdir that holds a run)")
    if command.config == FILE:
      raise UsageError("--config is required, e.g. --config configs/bert.py:tiny")
    return None
  try:
    config = fv.config
    if config is None:
      raise UsageError("--config is required, e.g. --config configs/bert.py:tiny")
    config.keys()
  except OSError as e:   # ml_collections defers a failed load until first access
    detail = " ".join(line.strip() for line in str(e).splitlines()[1:] if line.strip())
    raise UsageError(f"cannot load --config: {detail or e}; give a preset "
                     f"({', '.join(presets.PRESETS)}: e.g. --config bert:tiny) or a config file "
                     "with get_config(arg)") from None
  return config


class Args:
  """The command's flag values by Python name (--max-new-tokens -> args.max_new_tokens)."""

  def __init__(self, command: Command, fv: flags.FlagValues, positional: list[str] = ()):
    if command.positional:
      setattr(self, command.positional, list(positional))
    for f in command.flags:
      value = fv[f.name].value
      if f.required and value in (None, ""):
        raise UsageError(f"--{f.name} is required (see plm-jax {command.name} --help)")
      setattr(self, f.key, value)


def command_help(command: Command) -> str:
  lines = [f"usage: plm-jax {command.name} [flags]", "", command.summary + "."]
  if command.example:
    lines += ["", f"example: {command.example}"]
  lines += ["", "flags:"]
  if command.config in (FILE, FILE_OR_WORKDIR):
    lines.append("  --config FILE:ARG: a config file and its argument, e.g. configs/bert.py:tiny"
                 + (" (default: the one saved in --workdir)"
                    if command.config == FILE_OR_WORKDIR else ""))
  for f in command.flags + (DISTRIBUTED_FLAGS if command.distributed else ()):
    value = {"string": "TEXT", "integer": "N", "float": "X", "bool": "",
             "enum": "|".join(f.choices)}[f.kind]
    default = " (required)" if f.required else (
        f" (default: {f.default})" if f.default not in (None, "") else "")
    lines.append(f"  --{f.name}{' ' + value if value else ''}: {f.help}{default}")
  if command.config:
    lines += ["", "config fields: override any with --config.GROUP.FIELD=VALUE (e.g. "
              "--config.train.steps=100);", "list them with `plm-jax config --config FILE:ARG`"
              + (" or `plm-jax config --workdir DIR`" if command.config != FILE else "")]
  return "\n".join(lines)


def usage() -> str:
  width = max(len(n) for n in COMMANDS)
  rows = [f"  {name:<{width}}  {c.summary}" for name, c in COMMANDS.items()]
  examples = [f"  {c.example}" for c in COMMANDS.values() if c.example]
  return "\n".join([__doc__.split("\n\n")[0].replace('"""', "").strip(), "",
                    "usage: plm-jax COMMAND [flags]; plm-jax COMMAND --help", "", "commands:",
                    *rows, "", "examples:", *examples])


def _command_of(argv: list[str]) -> tuple[Command | None, list[str]]:
  """The command named by argv[1] (or argv[1:3] for two-word commands) and its arguments."""
  for words in (2, 1):
    name = " ".join(argv[1:1 + words])
    if name in COMMANDS:
      return COMMANDS[name], argv[1 + words:]
  return None, []


def quiet_libraries() -> None:
  """The CLI shows the user's errors, once, in one line: not jax's C++ log noise, nor Orbax's
  logs of a failure it is about to raise (a full disk prints one log per array), nor asyncio's
  complaints about the futures of a restore that failed. PLM_JAX_VERBOSE=1 keeps them."""
  if os.environ.get("PLM_JAX_VERBOSE"):
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  topology.quiet_libtpu()
  logging.set_verbosity(logging.FATAL)
  std_logging.getLogger("asyncio").setLevel(std_logging.CRITICAL)
  # TensorStore reads still in flight when a restore fails land on Orbax's closed event loop;
  # their "Event loop is closed" tracebacks would bury the one line that explains the failure.
  def closed_loop(error) -> bool:
    return isinstance(error, RuntimeError) and "Event loop is closed" in str(error)
  sys.excepthook = _unless(closed_loop, lambda a: a[1], sys.excepthook)
  threading.excepthook = _unless(closed_loop, lambda a: a[0].exc_value, threading.excepthook)
  sys.unraisablehook = _unless(closed_loop, lambda a: a[0].exc_value, sys.unraisablehook)


def _unless(ignored, error_of, hook):
  def filtered(*args):
    if not ignored(error_of(args)):
      hook(*args)
  return filtered


def _run(command: Command, early: flags.FlagValues, flag_argv: list[str]) -> None:
  fv = flags.FlagValues()
  _define(command, fv)
  _define_config(command, fv, early, flag_argv)
  positional = _parse(command, fv, flag_argv)
  args = Args(command, fv, positional)
  if command.compile_cache:
    accelerator.enable_compilation_cache()     # a rerun loads its compiled steps
  command.run(_config(command, fv), args)


def _kept(workdir: str | None) -> str:
  """What a run stopped outside its steps keeps, for its one line."""
  steps = checkpoint.complete_steps(workdir) if workdir else []
  if steps:
    return (f"the last checkpoint, step {steps[-1]} in {checkpoint.checkpoint_dir(workdir)}, "
            "is intact")
  return "nothing of the run was lost"


def _join(launch) -> None:
  """Joins the run's processes, before anything touches jax (a workdir's config is fitted to
  the devices); a supervised process's native output goes to its log first."""
  if launch.mode != "single":
    supervisor.redirect_native_output()
  distributed.initialize(launch)
  if launch.mode != "single":
    supervisor.note_place(jax.process_index(), jax.process_count())


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(usage())
    return 0 if len(argv) >= 2 else 2
  if argv[1] == "--version":
    print(f"plm-jax {__version__}")
    return 0
  command, rest = _command_of(argv)
  if command is None:
    print(f"plm-jax: unknown command {' '.join(argv[1:3])!r}; one of {', '.join(COMMANDS)}",
          file=sys.stderr)
    return 2
  if any(a in ("-h", "--help", "-help", "--helpfull") for a in rest):
    print(command_help(command))
    return 0
  quiet_libraries()
  flag_argv = [f"plm-jax {command.name}", *_normalise(rest, command)]
  launch = None
  try:
    early = _first_pass(command, flag_argv)
    if command.distributed:
      launch = distributed.detect(*(early[name].value for name in (
          "coordinator", "num-processes", "process-id", "heartbeat-timeout")))
      if launch.mode != "single" and not supervisor.supervised():
        # A lost peer aborts the others in C++: a parent process turns that into one line.
        return supervisor.supervise(argv, command.name, lambda: _kept(early["workdir"].value),
                                    launch.num_processes)
      _join(launch)
    # One process: SIGTERM before or after the steps ends in one line and 75 too (several:
    # JAX's preemption service owns SIGTERM; the step loop stops them all).
    stops = (OutsideTheLoop(lambda: _kept(early["workdir"].value))
             if command.resumable and (launch is None or launch.mode == "single")
             else contextlib.nullcontext())
    with stops:
      _run(command, early, flag_argv)
  except RunStopped as e:
    print(f"plm-jax {command.name}: {e}", file=sys.stderr)
    return e.exit_code
  except jax.errors.JaxRuntimeError as e:
    if launch is not None and launch.mode != "single":
      # A collective cut off by a dead peer: the runtime's verdict on it is on its way.
      supervisor.await_verdict(e, launch.heartbeat_timeout_s)
    raise
  except (flags.Error, UsageError, PlmJaxError) as e:
    print(f"plm-jax {command.name}: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"plm-jax {command.name}: interrupted: stopped without saving a checkpoint",
          file=sys.stderr)
    return 130
  return 0


def entry() -> None:
  """Console-script entry point."""
  try:
    code = main()
  except BrokenPipeError:
    # `plm-jax CMD --help | head`: the reader left; nothing is wrong with the command.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    code = 0
  if code:
    # After a failed restore TensorStore may still deliver reads to Orbax's closed event loop
    # and print tracebacks at interpreter exit; the user's one-line error is already out.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  sys.exit(code)


if __name__ == "__main__":
  entry()
