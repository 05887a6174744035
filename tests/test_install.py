"""A built wheel, not the checkout: the packaged presets run README's first example from another
directory."""

import os
import subprocess
import sys
import sysconfig

import pytest

from helpers import ROOT


def test_presets_resolve_by_name_from_anywhere(tmp_path, monkeypatch):
  from plm_jax import configs
  packaged = os.path.join(configs.DIRECTORY, "bert.py")
  assert configs.resolve("bert:tiny") == packaged + ":tiny"
  assert configs.resolve("bert") == packaged
  monkeypatch.chdir(ROOT)                       # in the checkout, its path is used as given
  assert configs.resolve("configs/bert.py:base") == "configs/bert.py:base"
  monkeypatch.chdir(tmp_path)                   # elsewhere, that path is the packaged preset
  assert configs.resolve("configs/bert.py:base") == packaged + ":base"
  (tmp_path / "mine.py").write_text("def get_config(arg=None): ...\n")
  for value in ("mine.py:x", "nope:tiny", "some/dir/bert:tiny", "/abs/own.py"):
    assert configs.resolve(value) == value       # files of one's own, and unknown names
  from plm_jax import cli
  assert cli.main(["plm-jax", "config", "--config", "gpt:124m-paper"]) == 0
  assert cli.main(["plm-jax", "config", "--config", "nope:tiny"]) == 2


@pytest.mark.e2e
def test_wheel_runs_the_first_example_from_another_directory(tmp_path):
  dist = tmp_path / "dist"
  subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                  "--no-build-isolation", "-w", str(dist), ROOT], check=True)
  (wheel,) = dist.glob("plm_jax-*.whl")
  # A fresh venv holding only the wheel; the dependencies are this environment's, put on its
  # path by a .pth line (whose own .pth files, such as the editable install's finder, never
  # run), so nothing is downloaded and the checkout is out of sight.
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  python = str(venv / "bin" / "python")
  site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        check=True, capture_output=True, text=True).stdout.strip()
  with open(os.path.join(site, "dependencies.pth"), "w") as f:
    f.write(sysconfig.get_paths()["purelib"] + "\n")
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                  "--target", site, str(wheel)], check=True)
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  where = subprocess.run([python, "-c", "import plm_jax; print(plm_jax.__file__)"], cwd=elsewhere,
                         env=env, check=True, capture_output=True, text=True).stdout
  assert where.startswith(site), where                       # the wheel's copy, not the checkout
  run = subprocess.run([python, "-m", "plm_jax.cli", "train", "--config", "bert:tiny",
                        "--workdir", "runs/bert-tiny", "--config.train.steps=2",
                        "--config.train.eval_steps=1", "--config.data.dupe_factor=1"],
                       cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
  assert (elsewhere / "runs" / "bert-tiny" / "config.json").exists()
  # a path to the checkout's configs/ that is not there resolves to the packaged preset too
  shown = subprocess.run([python, "-m", "plm_jax.cli", "config", "--config",
                          "configs/xlnet.py:tiny"], cwd=elsewhere, env=env, capture_output=True,
                         text=True, timeout=300)
  assert shown.returncode == 0 and "family: xlnet" in shown.stdout, shown.stderr[-2000:]
