"""What a user sees while a run works: the progress bar, start-up phases, tracker failures."""

import io
import importlib.util

import pytest

from helpers import family_config
from plm_jax import checks
from plm_jax.errors import ConfigError
from plm_jax.run import metrics_writer
from plm_jax.run import trackers


class Terminal(io.StringIO):
  def isatty(self):
    return True


def test_bar_only_in_a_terminal_unless_asked():
  assert metrics_writer.wants_bar("auto", Terminal())
  assert not metrics_writer.wants_bar("auto", io.StringIO())       # a log file, a pipe
  assert metrics_writer.wants_bar("on", io.StringIO())
  assert not metrics_writer.wants_bar("off", Terminal())


def test_bar_counts_steps_and_lines_print_above_it(capsys):
  stream = Terminal()
  bar = metrics_writer.ProgressBar(True, total=10, initial=4, stream=stream)
  bar.advance(1, "loss 2.5000")
  metrics_writer.console("step 5/10 | loss 2.5000")        # while the bar is shown
  bar.advance(5)
  bar.close()
  drawn = stream.getvalue()
  assert "10/10" in drawn and "loss 2.5000" in drawn        # resumed at 4, ended at 10
  assert capsys.readouterr().out == "step 5/10 | loss 2.5000\n"    # the record stays on stdout
  metrics_writer.console("after")                            # the bar is gone: plain again
  assert capsys.readouterr().out == "after\n"
  off = metrics_writer.ProgressBar(False, total=10, initial=0, stream=stream)
  off.advance(3)
  off.close()
  assert stream.getvalue() == drawn


def test_timed_phase_names_its_time(capsys):
  with metrics_writer.timed("compiled the train step"):
    pass
  out = capsys.readouterr().out
  assert out.startswith("compiled the train step in ") and out.endswith("s\n")


def test_tracker_settings_are_checked_before_the_run(monkeypatch):
  config = family_config("bert")
  checks.validate(config, 1)                                 # off by default
  config.train.wandb_project = "p"
  config.train.wandb_mode = "offlne"
  with pytest.raises(ConfigError, match="train.wandb_mode='offlne' is not one of online"):
    checks.validate(config, 1)
  config.train.wandb_mode = "offline"
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "wandb" else real(name, *a))
  with pytest.raises(ConfigError, match=r"pip install 'plm-jax\[wandb\]'"):
    checks.validate(config, 1)
  config.train.progress_bar = "yes"
  with pytest.raises(ConfigError, match="train.progress_bar='yes'"):
    checks.validate(config, 1)


def test_a_failing_tracker_warns_once_and_the_run_goes_on():
  warnings, calls = [], []

  class Flaky:
    def log(self, step, split, metrics):
      calls.append(step)
      raise ConnectionError("the server went away")

    def close(self):
      raise AssertionError("a tracker that failed is not called again")

  guarded = trackers._Guarded("MLflow", warnings.append, Flaky)
  guarded.log(1, "train", {"loss": 1.0})
  guarded.log(2, "train", {"loss": 0.5})
  guarded.close()
  assert calls == [1]
  assert len(warnings) == 1 and "MLflow stopped logging (ConnectionError: the server went away)" \
      in warnings[0]
