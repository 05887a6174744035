"""What "auto" resolves to, explicit settings winning, bad values and the compile cache."""

import json
import os
import subprocess
import sys

import jax
import pytest

from helpers import ROOT, family_config
from plm_jax import checks
from plm_jax.hardware import accelerator
from plm_jax.cli import main
from plm_jax.errors import ConfigError
from plm_jax.families import model_config


def test_auto_on_cpu_is_exact_float32_xla_threefry():
  config = family_config("gpt")
  assert (config.model.dtype, config.model.attention_impl, config.train.prng_impl) == (
      "auto", "auto", "auto")
  mcfg = model_config(config, 4096)
  assert (mcfg.dtype, mcfg.attention_impl) == ("float32", "xla")
  assert accelerator.prng_impl("auto") == "threefry2x32"


def test_auto_on_an_accelerator_is_bfloat16_and_its_kernel(monkeypatch):
  for platform, kernel in (("gpu", "cudnn"), ("tpu", "splash"), ("rocm", "xla")):
    monkeypatch.setattr(accelerator, "platform", lambda p=platform: p)
    assert accelerator.compute_dtype("auto") == "bfloat16"
    assert accelerator.attention_impl("auto") == kernel
    assert accelerator.prng_impl("auto") == "rbg"
    assert accelerator.compute_dtype("float32") == "float32"       # explicit wins
    assert accelerator.prng_impl("threefry2x32") == "threefry2x32"
  # cuDNN's flash kernel takes 16-bit inputs: float32 compute on a GPU attends with XLA.
  monkeypatch.setattr(accelerator, "platform", lambda: "gpu")
  assert accelerator.attention_impl("auto", dtype="float32") == "xla"


@pytest.mark.parametrize("field,value", [("model.dtype", "fp8"),
                                         ("model.attention_impl", "flash"),
                                         ("train.prng_impl", "philox")])
def test_unknown_values_are_config_errors(field, value):
  config = family_config("gpt", **{field: value})
  with pytest.raises(ConfigError, match=f"{field}={value!r} is not one of"):
    checks.validate(config, jax.device_count())


def test_kernels_of_another_machine_name_the_fix():
  config = family_config("gpt", **{"model.attention_impl": "cudnn"})
  with pytest.raises(ConfigError, match="needs an NVIDIA GPU.*attention_impl=auto"):
    checks.validate(config, jax.device_count())
  checks.validate(config, 8, num_processes=1)     # planning a GPU run here is fine
  config = family_config("gpt", **{"model.attention_impl": "splash"})
  with pytest.raises(ConfigError, match="'splash' is the TPU kernel.*attention_impl=auto"):
    checks.validate(config, jax.device_count())
  config = family_config("gpt", **{"model.attention_impl": "cudnn", "model.dtype": "float32"})
  with pytest.raises(ConfigError, match="needs 16-bit compute"):
    checks.validate(config, 8, num_processes=1)


def test_compilation_cache_directory(monkeypatch, tmp_path):
  before = jax.config.jax_compilation_cache_dir
  monkeypatch.setenv("PLM_JAX_CACHE", str(tmp_path))
  monkeypatch.delenv("PLM_JAX_COMPILATION_CACHE", raising=False)
  try:
    assert accelerator.enable_compilation_cache() == str(tmp_path / "xla")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
    assert (tmp_path / "xla").is_dir()
  finally:
    jax.config.update("jax_compilation_cache_dir", before)
  monkeypatch.setenv("PLM_JAX_COMPILATION_CACHE", str(tmp_path / "elsewhere"))
  assert accelerator.compilation_cache_dir() == str(tmp_path / "elsewhere")
  monkeypatch.setenv("PLM_JAX_COMPILATION_CACHE", "off")
  assert accelerator.enable_compilation_cache() is None


def test_slowest_ops_sums_device_time_by_name(tmp_path):
  """From a profiler trace: only the device's events count (not the host's), summed by name."""
  import gzip
  from plm_jax.sizing.bench import slowest_ops
  events = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
            {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/device:GPU:0"}},
            {"ph": "X", "pid": 1, "tid": 1, "name": "python", "dur": 90000},
            {"ph": "X", "pid": 2, "tid": 5, "name": "fusion.1", "dur": 3000},
            {"ph": "X", "pid": 2, "tid": 5, "name": "cudnn_attention", "dur": 5000},
            {"ph": "X", "pid": 2, "tid": 6, "name": "fusion.1", "dur": 3000}]
  run = tmp_path / "plugins" / "profile" / "run1"
  run.mkdir(parents=True)
  with gzip.open(run / "host.trace.json.gz", "wt") as f:
    json.dump({"traceEvents": events}, f)
  ops = slowest_ops(str(tmp_path), steps=2)
  assert ops == [{"name": "fusion.1", "ms_per_step": 3.0, "share": 0.5455},
                 {"name": "cudnn_attention", "ms_per_step": 2.5, "share": 0.4545}]


def test_bench_compile_only_prints_settings_and_memory(capsys):
  assert main(["plm-jax", "bench", "--config", os.path.join(ROOT, "configs/gpt.py:tiny"),
               "--compile-only", "--config.train.batch_size=8"]) == 0
  out = capsys.readouterr().out
  assert "float32 compute" in out and "xla attention" in out and "threefry2x32" in out
  figures = json.loads(out.strip().splitlines()[-1])
  assert figures["temp_gib"] >= 0 and figures["compile_s"] > 0 and "step_ms" not in figures
  # GPT: the tied LM head (6 V d per token) is what the references' convention leaves out.
  assert figures["flops_per_token_computed"] - figures["flops_per_token"] > 6 * 4096 * 128


def test_data_bench_exits_cleanly_as_a_process():
  """It printed its figures and then aborted (134): the loader thread was left running."""
  r = subprocess.run([sys.executable, "-m", "plm_jax.cli", "data", "bench", "--config",
                      "configs/gpt.py:tiny", "--batches", "5"], cwd=ROOT, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert '"figure": "data_bench"' in r.stdout
