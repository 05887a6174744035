"""The `plm-jax` command: parse flags, call one library function per subcommand.

  plm-jax train     --config configs/bert.py:tiny --workdir runs/bert [--config.x.y=v ...]
  plm-jax evaluate  --workdir runs/bert [--step N] [--eval_steps N] [--config.mesh.tensor=2 ...]
                    fine-tuned runs: [--best] [--split validation|test|train]
  plm-jax finetune  --config configs/classify.py:sst2 --init-from runs/bert --workdir runs/sst2
  plm-jax bench     --config configs/gpt.py:124m [--config.x.y=v ...]
  plm-jax plan      --config configs/gpt.py:1.5b,mesh=tpu-v5e-256 --topology v5e-256 [--mfu 0.4]
                    (or --devices N [--hbm-gib G --peak-tflops F])
  plm-jax tokenizer train --input 'corpus/*.txt' --kind wordpiece --vocab-size 30522 --out DIR
  plm-jax data prepare --config configs/bert.py:base --out DIR [--config.data.x=v ...]
  plm-jax data bench   --config configs/bert.py:tiny [--batches N] [--config.data.x=v ...]
  plm-jax import-hf --hf-dir path/to/hf-model --workdir runs/imported
  plm-jax export-hf --workdir runs/bert --out path/to/hf-model [--step N]
  plm-jax generate  --workdir runs/gpt --prompt "Once upon a time" [--max-new-tokens 32
                    --temperature 0.8 --top-k 40 --top-p 0.95 --seed 0 --num-samples 2]
  plm-jax fill-mask --workdir runs/bert --text "Paris is the [MASK] of France." [--top-k 5]
  plm-jax bench-decode --config configs/gpt.py:tiny [--batch-sizes 1,32 --prompt-lengths 16,96]

`train` without --config continues the run in --workdir with the config saved there (which
--config.<field>=<value> may override), e.g. after import-hf.
"""

import json
import os
import sys

from absl import flags

USAGE = __doc__


def _argv_value(argv: list[str], name: str) -> str | None:
  for i, arg in enumerate(argv):
    if arg == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith(f"--{name}="):
      return arg.split("=", 1)[1]
  return None


def _config_flags(fv: flags.FlagValues, argv: list[str], command: str) -> None:
  from ml_collections import config_flags
  workdir = _argv_value(argv, "workdir")
  if command == "evaluate":
    # Evaluation restores onto FSDP over the devices present; --config.mesh.* (or any field)
    # overrides that, e.g. to evaluate with tensor parallelism.
    if workdir and any(a.startswith("--config.") for a in argv) and os.path.exists(
        os.path.join(workdir, "config.json")):
      from plm_jax.checkpoint import load_config
      from plm_jax.inference import fit_to_devices
      config_flags.DEFINE_config_dict("config", fit_to_devices(load_config(workdir)),
                                      "the workdir's config", flag_values=fv,
                                      lock_config=True, sys_argv=argv)
    return
  if (command == "train" and _argv_value(argv, "config") is None and workdir
      and os.path.exists(os.path.join(workdir, "config.json"))):
    # Continue a run (or an imported model) with the config saved in its workdir.
    from plm_jax.checkpoint import load_config
    config_flags.DEFINE_config_dict("config", load_config(workdir), "the workdir's config",
                                    flag_values=fv, lock_config=True, sys_argv=argv)
    return
  # sys_argv: the overrides are read from these arguments (not sys.argv), so main() can be
  # called with any argv, as the tests do.
  config_flags.DEFINE_config_file("config", None, "config file[:arg], e.g. configs/bert.py:tiny",
                                  flag_values=fv, lock_config=True, sys_argv=argv)


DISTRIBUTED_COMMANDS = ("train", "finetune", "evaluate", "bench")
CONFIG_COMMANDS = ("train", "bench", "data prepare", "data bench", "bench-decode", "finetune",
                   "plan")


def _define(command: str, fv: flags.FlagValues, argv: list[str]) -> None:
  if command in CONFIG_COMMANDS or command == "evaluate":
    _config_flags(fv, argv, command)
  if command == "import-hf":
    flags.DEFINE_string("hf-dir", None, "a Hugging Face model directory", flag_values=fv)
  if command in ("import-hf", "export-hf"):
    flags.DEFINE_string("workdir", None, "the plm-jax run directory", flag_values=fv)
  if command in ("generate", "fill-mask"):
    flags.DEFINE_string("workdir", None, "the run to restore", flag_values=fv)
    flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)", flag_values=fv)
    flags.DEFINE_integer("top-k", 0 if command == "generate" else 5,
                         "sample from (generate) / print (fill-mask) the k best tokens",
                         flag_values=fv)
  if command == "generate":
    flags.DEFINE_string("prompt", None, "text to continue", flag_values=fv)
    flags.DEFINE_string("prompts-file", None, "a file of prompts, one per line (batched)",
                        flag_values=fv)
    flags.DEFINE_integer("max-new-tokens", 32, "tokens to generate", flag_values=fv)
    flags.DEFINE_float("temperature", 0.0, "0 = greedy", flag_values=fv)
    flags.DEFINE_float("top-p", 1.0, "nucleus sampling mass", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "sampling seed", flag_values=fv)
    flags.DEFINE_integer("num-samples", 1, "continuations per prompt", flag_values=fv)
  if command == "fill-mask":
    flags.DEFINE_string("text", None, "text with one or more mask tokens", flag_values=fv)
  if command == "bench-decode":
    flags.DEFINE_string("batch-sizes", "1,32", "comma-separated", flag_values=fv)
    flags.DEFINE_string("prompt-lengths", "16,96", "comma-separated", flag_values=fv)
    flags.DEFINE_integer("new-tokens", 32, "tokens generated per run", flag_values=fv)
  if command == "export-hf":
    flags.DEFINE_string("out", None, "directory to write the transformers model to",
                        flag_values=fv)
    flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)", flag_values=fv)
  if command == "tokenizer train":
    flags.DEFINE_string("input", None, "glob of text (.txt/.gz) or JSON-lines (.jsonl) files",
                        flag_values=fv)
    flags.DEFINE_enum("kind", None, ["wordpiece", "bpe"], "wordpiece (BERT) or bpe (GPT-2)",
                      flag_values=fv)
    flags.DEFINE_integer("vocab-size", None, "entries in the vocabulary", flag_values=fv)
    flags.DEFINE_string("out", None, "directory for tokenizer.json", flag_values=fv)
    flags.DEFINE_bool("lowercase", True, "WordPiece: lowercase and strip accents",
                      flag_values=fv)
    flags.DEFINE_string("text-field", "text", "JSON lines: the field holding the text",
                        flag_values=fv)
  if command == "data prepare":
    flags.DEFINE_string("out", None, "directory for the prepared shards", flag_values=fv)
  if command == "data bench":
    flags.DEFINE_integer("batches", 50, "batches to time", flag_values=fv)
  if command == "plan":
    flags.DEFINE_string("topology", None, "hardware to plan for: v4-8, v4-32, v5e-16, v5e-256, "
                        "2xv5e-256, v5p-128, 1xh100, 8xh100, 4x8xh100, 1xh200, 8xh200, 8xa100",
                        flag_values=fv)
    flags.DEFINE_integer("devices", None, "or: N devices of one host", flag_values=fv)
    flags.DEFINE_float("mfu", 0.4, "model FLOPs utilisation assumed for the step time",
                       flag_values=fv)
    flags.DEFINE_float("hbm-gib", 0.0, "memory per device (overrides the topology's)",
                       flag_values=fv)
    flags.DEFINE_float("peak-tflops", 0.0, "peak bf16 TFLOP/s per device (overrides)",
                       flag_values=fv)
  if command in ("train", "evaluate", "finetune"):
    flags.DEFINE_string("workdir", None, "run directory: checkpoints, logs, tokenizer",
                        flag_values=fv)
  if command in DISTRIBUTED_COMMANDS:
    # Read by main() before jax starts (see plm_jax/distributed.py); defined for --help.
    flags.DEFINE_string("coordinator", None, "multi-process: HOST:PORT of process 0's "
                        "coordinator (or PLM_JAX_COORDINATOR)", flag_values=fv)
    flags.DEFINE_integer("num-processes", None, "multi-process: processes in the run",
                         flag_values=fv)
    flags.DEFINE_integer("process-id", None, "multi-process: this process's index",
                         flag_values=fv)
    flags.DEFINE_integer("heartbeat-timeout", None, "multi-process: seconds without a "
                         "heartbeat after which the others stop with an error (default 60)",
                         flag_values=fv)
  if command == "finetune":
    flags.DEFINE_string("init-from", None, "the pretraining (or import-hf) workdir whose latest "
                        "checkpoint the body starts from", flag_values=fv)
  if command == "evaluate":
    flags.DEFINE_integer("step", None, "checkpoint step to evaluate (default: the latest)",
                         flag_values=fv)
    flags.DEFINE_integer("eval_steps", None, "eval batches (default: the run's train.eval_steps;"
                         " 0 = the whole eval split)", flag_values=fv)
    flags.DEFINE_bool("best", False, "fine-tuned runs: the best checkpoint (best/), not the "
                      "latest", flag_values=fv)
    flags.DEFINE_string("split", "validation", "fine-tuned runs: validation, test or train",
                        flag_values=fv)


def _load_config(fv: flags.FlagValues):
  try:
    config = fv.config
    if config is None:
      raise _UsageError("--config is required, e.g. --config configs/bert.py:tiny")
    config.keys()
  except OSError as e:   # ml_collections defers a failed load until first access
    detail = " ".join(line.strip() for line in str(e).splitlines()[1:] if line.strip())
    raise _UsageError(f"cannot load --config: {detail or e}; give a config file such as "
                      "configs/bert.py:tiny or configs/gpt.py:tiny") from None
  return config


def _require(fv: flags.FlagValues, *names: str) -> None:
  for name in names:
    if fv[name].value in (None, ""):
      raise _UsageError(f"--{name} is required (see --help)")


def _run(command: str, fv: flags.FlagValues):
  config = _load_config(fv) if command in CONFIG_COMMANDS else None
  if command in ("train", "evaluate", "finetune") and not fv.workdir:
    raise _UsageError("--workdir is required, e.g. --workdir runs/bert-tiny")
  if command == "train":
    from plm_jax.train import train
    return train(config, fv.workdir)
  if command == "finetune":
    from plm_jax.finetune.run import finetune
    return finetune(config, fv.workdir, init_from=fv["init-from"].value)
  if command == "evaluate":
    from plm_jax.evaluate import evaluate
    overrides = fv.config if "config" in fv else None
    return evaluate(fv.workdir, step=fv.step, eval_steps=fv.eval_steps, config=overrides,
                    best=fv.best, split=fv.split)
  if command == "bench":
    from plm_jax.bench import bench
    return bench(config)
  if command == "tokenizer train":
    _require(fv, "input", "kind", "vocab-size", "out")
    from plm_jax.data.commands import tokenizer_train
    return tokenizer_train(fv.input, fv.kind, fv["vocab-size"].value, fv.out,
                           lowercase=fv.lowercase, text_field=fv["text-field"].value)
  if command == "data prepare":
    _require(fv, "out")
    from plm_jax.data.commands import data_prepare
    return data_prepare(config, fv.out)
  if command == "plan":
    from plm_jax.plan import plan
    return plan(config, fv.topology, fv.devices, fv.mfu, fv["hbm-gib"].value,
                fv["peak-tflops"].value)
  if command == "data bench":
    from plm_jax.data.commands import data_bench
    return data_bench(config, fv.batches)
  if command == "import-hf":
    _require(fv, "hf-dir", "workdir")
    from plm_jax.hf_workdir import import_hf
    return import_hf(fv["hf-dir"].value, fv.workdir)
  if command == "generate":
    _require(fv, "workdir")
    return _generate(fv)
  if command == "fill-mask":
    _require(fv, "workdir", "text")
    from plm_jax.inference import fill_mask, load_model
    results = fill_mask(load_model(fv.workdir, fv.step), fv.text, fv["top-k"].value)
    for i, candidates in enumerate(results, 1):
      print(f"mask {i}: " + ", ".join(f"{t} {p:.4f}" for t, p in candidates))
    print(json.dumps({"text": fv.text, "masks": [[{"token": t, "prob": p} for t, p in c]
                                                 for c in results]}))
    return results
  if command == "bench-decode":
    from plm_jax.bench import bench_decode
    return bench_decode(config, [int(x) for x in fv["batch-sizes"].value.split(",")],
                        [int(x) for x in fv["prompt-lengths"].value.split(",")],
                        fv["new-tokens"].value)
  if command == "export-hf":
    _require(fv, "workdir", "out")
    from plm_jax.hf_workdir import export_hf
    return export_hf(fv.workdir, fv.out, fv.step)


def _generate(fv: flags.FlagValues):
  from plm_jax.generate import SamplingConfig
  from plm_jax.inference import generate_text, load_model
  prompts = [fv.prompt] if fv.prompt is not None else []
  if fv["prompts-file"].value:
    try:
      with open(fv["prompts-file"].value, encoding="utf-8") as f:
        prompts += [line.rstrip("\n") for line in f if line.strip()]
    except OSError as e:
      raise _UsageError(f"cannot read --prompts-file: {e}") from None
  if not prompts:
    raise _UsageError("give --prompt TEXT or --prompts-file FILE")
  cfg = SamplingConfig(max_new_tokens=fv["max-new-tokens"].value,
                       temperature=fv.temperature, top_k=fv["top-k"].value,
                       top_p=fv["top-p"].value, seed=fv.seed)
  outputs = generate_text(load_model(fv.workdir, fv.step), prompts, cfg, fv["num-samples"].value)
  for prompt, samples in zip(prompts, outputs):
    for sample in samples:
      print(f"{prompt}\033[1m{sample}\033[0m" if sys.stdout.isatty() else prompt + sample)
  print(json.dumps([{"prompt": p, "samples": s} for p, s in zip(prompts, outputs)]))
  return outputs


class _UsageError(Exception):
  pass


COMMANDS = ("train", "finetune", "evaluate", "plan", "bench", "tokenizer train", "data prepare", "data bench",
            "import-hf", "export-hf", "generate", "fill-mask", "bench-decode")


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(USAGE)
    return 0 if len(argv) >= 2 else 2
  command, rest_at = argv[1], 2
  if command in ("tokenizer", "data"):    # two-word commands
    command = f"{argv[1]} {argv[2] if len(argv) > 2 else ''}".strip()
    rest_at = 3
  if command not in COMMANDS:
    print(f"plm-jax: unknown command {command!r}; one of {', '.join(COMMANDS)}\n{USAGE}",
          file=sys.stderr)
    return 2
  # The CLI shows the user's errors, not jax's C++ log noise nor Orbax's info/warnings.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from absl import logging
  logging.set_verbosity(logging.ERROR)
  from plm_jax.errors import PlmJaxError

  fv = flags.FlagValues()
  flag_argv = [f"plm-jax {command}", *argv[rest_at:]]
  if command in DISTRIBUTED_COMMANDS:
    # Before anything touches jax (defining --config for evaluate counts the devices).
    from plm_jax import distributed
    try:
      launch = distributed.detect(*(_argv_value(flag_argv, name) for name in (
          "coordinator", "num-processes", "process-id", "heartbeat-timeout")))
    except ValueError as e:
      print(f"plm-jax {command}: error: {e}", file=sys.stderr)
      return 2
    distributed.initialize(launch)
  _define(command, fv, flag_argv)
  try:
    try:
      rest = fv(flag_argv)
    except (AttributeError, KeyError) as e:
      # ml_collections raises these for an override of a field the locked config lacks.
      message = str(e.args[0] if e.args else e).strip("'\"").replace("\\n", " ").replace(
          "\n", " ").replace("\\'", "").replace("\'", "")
      raise _UsageError(f"unknown config field in a --config.<field> override: {message}; "
                        "the fields are listed in the config file and plm_jax/configlib.py"
                        ) from None
    if len(rest) > 1:
      raise _UsageError(f"unexpected arguments {rest[1:]}")
    _run(command, fv)
  except flags.Error as e:
    print(f"plm-jax {command}: error: {e}", file=sys.stderr)
    return 2
  except (_UsageError, PlmJaxError) as e:
    print(f"plm-jax {command}: error: {e}", file=sys.stderr)
    return 2
  return 0


def entry() -> None:
  """Console-script entry point."""
  code = main()
  if code:
    # After a failed restore TensorStore may still deliver reads to Orbax's closed event loop
    # and print tracebacks at interpreter exit; the user's one-line error is already out.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  sys.exit(code)


if __name__ == "__main__":
  entry()
