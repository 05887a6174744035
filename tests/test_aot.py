"""The train step compiled for a TPU topology on this CPU host (libtpu's compiler, no TPU):
`bench --compile-only --topology` and `plan --compile`, their figures checked against what is
known independently (the plan's exact parameter and optimizer bytes, the mesh's collectives),
and the bad inputs each ending in one line."""

import importlib.util
import json
import re
import subprocess
import sys

import jax
import pytest
from jax.sharding import Mesh

from helpers import family_config
from plm_jax.sizing import plan
from plm_jax.hardware import topology
from plm_jax.errors import ConfigError
from plm_jax.models import splash

GIB = 2 ** 30
# gpt:tiny at T=128 (splash's tile): a 2-layer, 0.9M-parameter step, compiled in ~10-20 s here
TINY = ["--config", "configs/gpt.py:tiny", "--config.data.max_seq_length=128"]


def cli(*args, timeout=300):
  return subprocess.run([sys.executable, "-m", "plm_jax.cli", *args], capture_output=True,
                        text=True, timeout=timeout)


def last_json(out: str) -> dict:
  return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def test_bench_compiles_the_real_step_for_a_tpu_with_splash_kernels():
  r = cli("bench", *TINY, "--compile-only", "--topology", "v5p-8")
  assert r.returncode == 0, r.stderr[-2000:]
  result = last_json(r.stdout)
  # "auto" resolved for the TPU, not this CPU host
  assert (result["device"], result["devices"], result["dtype"], result["prng"]) == (
      "TPU v5", 4, "bfloat16", "rbg")
  assert result["attention"] == "splash" and result["attention_kernels"] == "splash (causal)"
  # the kernel lowered for the TPU (forward, dK/dV, dQ), not its interpreter
  assert result["mosaic_kernels"] >= 3
  # arguments = the state (params, Adam's two moments, counters) + the batch, per chip: the
  # plan's exact shard bytes, computed from the PartitionSpecs without the compiler
  config = family_config("gpt", **{"data.max_seq_length": 128})
  p = plan.make_plan(config, "v5p-8")
  batch_bytes = 3 * 32 * 128 * 4 / 4                # ids, labels/mask, positions: int32 rows
  expected = p.param_bytes + p.opt_bytes
  assert expected <= result["argument_gib"] * GIB <= expected + batch_bytes + 4096 + 0.002 * GIB
  # FSDP over 4 chips: weights all-gathered for use, gradients reduce-scattered back
  c = result["collectives"]
  assert c["all-gather"]["count"] > 0 and c["reduce-scatter"]["count"] > 0
  assert result["fits"] and 0 < result["compiled_gib"] < result["hbm_gib"]
  assert result["compile_s"] > 0 and result["temp_gib"] > 0


def test_plan_prints_its_estimate_beside_the_compiled_memory():
  r = cli("plan", *TINY, "--topology", "v5p-8", "--compile")
  assert r.returncode == 0, r.stderr[-2000:]
  out = last_json(r.stdout)
  assert out["estimate_gib"] == pytest.approx(out["total_bytes"] / GIB, abs=1e-3)
  assert out["compiled_gib"] > 0 and out["fits"]
  # the error is of the unrounded figures; the printed GiB are rounded to 3 decimals
  assert out["error"] == pytest.approx(out["estimate_gib"] / out["compiled_gib"] - 1, abs=0.05)
  assert "compiled" in r.stdout and "estimate" in r.stdout


def test_a_refusals_proposals_are_kept_only_if_the_compiler_fits_them():
  """The search's proposals go through `check` (plan --compile's compile): one it cannot fit is
  dropped, the others carry their compiled size."""
  config = family_config("gpt", **{"data.max_seq_length": 128})
  # a chip with 80% of what the plan needs: one micro-batch does not fit, two do
  hbm = plan.make_plan(config, "v5p-8").total_bytes / GIB / 0.9 * 0.8
  calls = []

  def check(c):            # the compiler fits only the remat proposal
    calls.append((c.model.remat, c.optim.grad_accum_steps))
    return {"fits": c.model.remat, "compiled_gib": 0.25}

  # the estimate alone proposes accumulation, and remat with accumulation
  with pytest.raises(ConfigError, match=r"fits with --config.optim.grad_accum_steps=2 \(.*, or "
                     r"--config.model.remat=true"):
    plan.make_plan(config, "v5p-8", hbm_gib=hbm)
  with pytest.raises(ConfigError) as e:
    plan.make_plan(config, "v5p-8", hbm_gib=hbm, check=check)
  assert calls[0] == (False, 2) and [remat for remat, _ in calls] == [False, True]
  assert re.search(r"fits with --config.model.remat=true[^,]*\(.*compiled: 0\.2 GiB",
                   str(e.value)), str(e.value)
  assert "fits with --config.optim.grad_accum_steps=2 (" not in str(e.value)
  with pytest.raises(ConfigError, match="nothing tried fits"):
    plan.make_plan(config, "v5p-8", hbm_gib=hbm, check=lambda c: None)


def test_splash_lowers_for_real_whenever_the_mesh_is_a_tpu():
  tpu = topology.compile_only_devices(topology.get("v5p-8"))
  cpu = jax.devices()[:4]
  assert splash.interpret_mode(Mesh(cpu, ("d",))) is True
  assert splash.interpret_mode(Mesh(tpu, ("d",))) is False


@pytest.mark.parametrize("args, message", [
    (("plan", *TINY, "--topology", "8xh100", "--compile"),
     "compiling for GPUs needs a GPU .* plan's estimate stands alone"),
    (("bench", *TINY, "--compile-only", "--topology", "1xh200"), "compiling for GPUs needs a GPU"),
    (("bench", *TINY, "--topology", "v5p-8"), "add --compile-only"),
    (("plan", *TINY, "--devices", "4", "--compile"), "give --topology NAME"),
    (("bench", *TINY, "--compile-only", "--topology", "v9-8"), "v5p-8.*v6e-256"),
], ids=["plan-gpu", "bench-gpu", "bench-no-compile-only", "plan-devices", "unknown"])
def test_bad_topologies_end_in_one_line(args, message, tmp_path):
  r = cli(*args)
  assert r.returncode == 2
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1, r.stderr
  assert re.search(message, lines[0]), lines[0]


def test_without_libtpu_the_line_gives_the_pip_command(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "libtpu" else real(name, *a))
  with pytest.raises(ConfigError, match=r"pip install 'jax\[tpu\]==\d"):
    topology.compile_only_devices(topology.get("v5p-8"))


@pytest.mark.parametrize("name", [n for n, t in topology.TOPOLOGIES.items()
                                  if t.platform == "tpu"])
def test_every_tpu_topology_is_laid_out_by_libtpu_as_the_table_says(name):
  t = topology.get(name)
  devices = topology.compile_only_devices(t)
  assert len(devices) == t.num_devices
  assert {d.device_kind for d in devices} == {t.device_kind}
  assert len({d.process_index for d in devices}) == t.num_processes
