"""Curves as PNG: what is read from metrics.jsonl, each run's figure, overlays, bad input."""

import json

import matplotlib.image
import numpy as np
import pytest

from plm_jax import cli
from plm_jax.errors import DataError
from plm_jax.run import plots


def write_run(directory, losses, evals, lr=1e-3):
  directory.mkdir(parents=True, exist_ok=True)
  with open(directory / "metrics.jsonl", "w") as f:
    for step, loss in losses:
      f.write(json.dumps({"step": step, "split": "train", "time": 0.0, "loss": loss,
                          "mlm_accuracy": 1 / loss, "learning_rate": lr, "grad_norm": 2.0,
                          "tokens_per_s": 1e4}) + "\n")
    f.write(json.dumps({"step": 3, "split": "resume", "time": 0.0}) + "\n")
    f.write("not json\n")
    for step, loss in evals:
      f.write(json.dumps({"step": step, "split": "eval", "time": 0.0, "loss": loss,
                          "perplexity": float("inf")}) + "\n")
  return directory


def test_curves_are_the_records_of_each_split(tmp_path):
  run = write_run(tmp_path / "a", [(1, 8.0), (2, 7.0), (3, 6.5)], [(3, 6.9)])
  curves = plots.read_curves(str(run))
  assert curves["train"]["loss"] == [(1, 8.0), (2, 7.0), (3, 6.5)]
  assert curves["train"]["mlm_accuracy"][0] == (1, 1 / 8.0)
  assert curves["eval"] == {"loss": [(3, 6.9)]}             # inf perplexity left out
  assert "tokens_per_s" not in curves["train"] and "resume" not in curves
  assert plots._panels(curves) == ["loss", "mlm_accuracy", "learning_rate", "grad_norm"]


def test_a_run_figure_and_an_overlay_are_pngs(tmp_path, capsys):
  a = write_run(tmp_path / "a", [(1, 8.0), (2, 7.0)], [(2, 7.2)])
  b = write_run(tmp_path / "b", [(1, 9.0), (2, 5.0)], [(2, 5.5)])
  path = plots.plot_run(str(a))
  assert path == str(a / "plots" / "curves.png")
  image = matplotlib.image.imread(path)
  assert image.shape[:2] == (680, 1500)      # 4 panels: 3 columns x 2 rows at 100 dpi
  out = tmp_path / "both.png"
  assert cli.main(["plm-jax", "plot", str(a), str(b), "--out", str(out)]) == 0
  assert f"wrote {out}" in capsys.readouterr().out
  both = matplotlib.image.imread(str(out))
  assert both.shape[:2] == (500, 800)
  # another run's curve changes the picture
  only_a = tmp_path / "a.png"
  plots.plot_runs([str(a)], str(only_a))
  assert not np.array_equal(matplotlib.image.imread(str(only_a)), both)


def test_bad_plot_requests_are_named(tmp_path, capsys):
  a = write_run(tmp_path / "a", [(1, 8.0)], [])
  assert cli.main(["plm-jax", "plot", str(a), "--metric", "bleu"]) == 2
  assert "has the metric 'bleu'" in capsys.readouterr().err
  assert cli.main(["plm-jax", "plot", str(tmp_path / "missing")]) == 2
  assert "holds no metrics.jsonl" in capsys.readouterr().err
  with pytest.raises(DataError, match="one or more run"):
    plots.plot_runs([], str(tmp_path / "x.png"))


def test_small_values_print_in_scientific_notation():
  from plm_jax.run.metrics_writer import format_metrics
  line = format_metrics({"learning_rate": 2e-5, "loss": 3.25, "zero": 0.0, "big": 54321.0},
                        ("loss", "learning_rate", "zero", "big"))
  assert line == "loss 3.2500 | learning_rate 2.000e-05 | zero 0.0000 | big 5.432e+04"
