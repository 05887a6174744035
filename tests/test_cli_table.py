"""The command table: every command's --help, --version, flag spellings, `plm-jax config`."""

import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT
from plm_jax import __version__, cli

BERT = os.path.join(ROOT, "configs", "bert.py")


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_has_help_listing_its_flags(name, capsys):
  command = cli.COMMANDS[name]
  assert cli.main(["plm-jax", *name.split(), "--help"]) == 0
  out = capsys.readouterr().out
  assert out.startswith(f"usage: plm-jax {name} [flags]")
  for flag in command.flags:
    assert f"--{flag.name}" in out and flag.help in out
  if command.config:
    assert "--config.GROUP.FIELD=VALUE" in out and "plm-jax config" in out
  if command.distributed:
    assert "--num-processes" in out


def test_top_level_help_and_version(capsys):
  assert cli.main(["plm-jax", "--help"]) == 0
  out = capsys.readouterr().out
  assert all(f"  {name} " in out for name in cli.COMMANDS)
  assert cli.main(["plm-jax", "--version"]) == 0
  assert capsys.readouterr().out.strip() == f"plm-jax {__version__}"
  assert cli.main(["plm-jax", "trian"]) == 2
  assert "unknown command 'trian'" in capsys.readouterr().err


def test_the_console_script_prints_help_and_exits_zero():
  done = subprocess.run([sys.executable, "-m", "plm_jax.cli", "evaluate", "--help"],
                        capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert done.returncode == 0, done.stderr
  assert "--eval-steps N" in done.stdout and "--split validation|test|train" in done.stdout


def test_flags_with_dashes_or_underscores_are_the_same_flag():
  command = cli.COMMANDS["generate"]
  argv = ["x", "--max_new_tokens=3", "--max-new-tokens", "4", "--top_p", "0.5",
          "--config.train.log_every=2", "--prompt", "--not_a_flag"]
  assert cli._normalise(argv, command) == ["x", "--max-new-tokens=3", "--max-new-tokens", "4",
                                           "--top-p", "0.5", "--config.train.log_every=2",
                                           "--prompt", "--not_a_flag"]


def test_config_command_prints_every_field_after_overrides(capsys):
  assert cli.main(["plm-jax", "config", "--config", f"{BERT}:base,mesh=gpu8",
                   "--config.train.batch_size=512"]) == 0
  out = capsys.readouterr().out
  assert "batch_size: 512" in out and "hidden_size: 768" in out and "fsdp: 8" in out
  assert cli.main(["plm-jax", "config", "--config", f"{BERT}:base",
                   "--config.train.batch_sise=512"]) == 2
  assert "list the fields with `plm-jax config" in capsys.readouterr().err


def test_required_flags_and_a_missing_config_are_one_line(capsys):
  assert cli.main(["plm-jax", "export-hf", "--workdir", "w"]) == 2
  assert capsys.readouterr().err.strip() == ("plm-jax export-hf: error: --out is required (see "
                                             "plm-jax export-hf --help)")
  assert cli.main(["plm-jax", "bench"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "--config is required" in err


def test_a_workdir_config_is_printed_as_saved(tmp_path, capsys):
  from configs import gpt
  from plm_jax import workdir
  config = gpt.get_config("tiny")
  config.train.steps = 77
  workdir.save_config(str(tmp_path), config)
  assert cli.main(["plm-jax", "config", "--workdir", str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert "steps: 77" in out and "family: gpt" in out
  assert json.loads(config.to_json())["train"]["steps"] == 77
