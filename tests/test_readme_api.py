"""README's Python API section runs as written (its code blocks, in order, in a temporary
directory)."""

import os
import re

import pytest

from helpers import ROOT

pytestmark = pytest.mark.e2e


def api_blocks() -> list[str]:
  text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
  section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
  return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_python_api_examples_run(tmp_path, monkeypatch, capsys):
  blocks = api_blocks()
  assert len(blocks) == 2
  monkeypatch.chdir(tmp_path)
  namespace: dict = {}
  for block in blocks:
    exec(compile(block, "README.md (Python API)", "exec"), namespace)  # noqa: S102
  out = capsys.readouterr().out
  assert re.search(r"MLM accuracy 0\.\d{3}", out) and re.search(r"validation accuracy", out)
  assert (tmp_path / "hf" / "api-bert" / "config.json").exists()
  assert (tmp_path / "runs" / "api-gpt" / "plots" / "curves.png").exists()
  assert namespace["tok"].decode(namespace["tok"]("Return the value.")) == "return the value."
