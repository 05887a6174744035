"""Mesh from the config and validation errors that name the field and a value that works."""

import math

import jax
import numpy as np
import pytest
from jax.experimental import mesh_utils

from helpers import family_config
from plm_jax import checks, parallel
from plm_jax.hardware import topology
from plm_jax.errors import ConfigError
from plm_jax.hardware.mesh_presets import PRESETS


def mesh_cfg(data, fsdp, tensor):
  return {"data": data, "fsdp": fsdp, "tensor": tensor}


def test_minus_one_fills_the_rest():
  assert parallel.resolve_mesh_shape(mesh_cfg(1, -1, 1), 8) == (1, 8, 1)
  assert parallel.resolve_mesh_shape(mesh_cfg(2, -1, 2), 8) == (2, 2, 2)
  assert parallel.resolve_mesh_shape(mesh_cfg(-1, 1, 1), 1) == (1, 1, 1)


@pytest.mark.parametrize("mesh,match", [
    (mesh_cfg(2, 2, 4), "needs 16 devices but 8 are present"),
    (mesh_cfg(-1, -1, 1), "at most one axis may be -1"),
    (mesh_cfg(3, -1, 1), "does not divide the 8 present"),
    (mesh_cfg(0, 8, 1), "positive or -1"),
])
def test_mesh_that_does_not_fit(mesh, match):
  with pytest.raises(ConfigError, match=match):
    parallel.resolve_mesh_shape(mesh, 8)


def test_batch_not_divisible_suggests_a_batch():
  config = family_config("bert", **{"train.batch_size": 30, "mesh.fsdp": 8})
  with pytest.raises(ConfigError, match=r"train.batch_size=30 .* use --config.train.batch_size=32"):
    checks.validate(config, 8)


def test_heads_not_divisible_by_tensor():
  config = family_config("gpt", **{"model.num_heads": 4, "mesh.fsdp": -1, "mesh.tensor": 8})
  with pytest.raises(ConfigError, match=r"num_heads=4 is not divisible by mesh.tensor=8; use "
                                        r"--config.mesh.tensor=4"):
    checks.validate(config, 8)


def test_objective_must_match_family():
  config = family_config("gpt", **{"objective.name": "mlm_nsp"})
  with pytest.raises(ConfigError, match="use --config.objective.name=causal_lm"):
    checks.validate(config, 8)


def test_sequence_longer_than_positions():
  config = family_config("bert", **{"data.max_seq_length": 256})
  with pytest.raises(ConfigError, match="max_position=128"):
    checks.validate(config, 8)




@pytest.mark.parametrize("preset", sorted(p for p in PRESETS if "topology" in PRESETS[p]))
def test_presets_build_their_mesh_from_fake_devices(preset):
  """Every hardware preset lays out the devices of its topology: each device once, and with DCN
  axes, each slice / node a contiguous block so only the DCN axes cross the slow links."""
  p = PRESETS[preset]
  t = topology.get(p["topology"])
  devices = topology.fake_devices(t)
  mesh_cfg = {**p["ici"], **{f"dcn_{k}": v for k, v in p.get("dcn", {}).items()}}
  shape = parallel.resolve_mesh_shape(mesh_cfg, len(devices))
  dcn = parallel.dcn_shape(mesh_cfg)
  mesh = parallel.make_mesh(shape, devices, dcn)
  assert mesh.devices.shape == shape
  assert sorted(d.id for d in mesh.devices.flat) == list(range(t.num_devices))
  ici = tuple(s // d for s, d in zip(shape, dcn))
  if t.platform == "tpu":
    # laid out by the chips' physical coordinates (no fallback to plain order)
    mesh_utils.create_device_mesh(ici, [d for d in devices if d.slice_index == 0],
                                  allow_split_physical_axes=True)
  if math.prod(dcn) > 1:
    # one DCN block = one slice (TPU) / one node (GPU)
    for index in np.ndindex(*dcn):
      block = mesh.devices[tuple(slice(i * n, (i + 1) * n) for i, n in zip(index, ici))]
      keys = {(d.slice_index if t.platform == "tpu" else d.process_index) for d in block.flat}
      assert len(keys) == 1


@pytest.mark.parametrize("preset", ["auto", "single", "dp"])
def test_generic_presets_resolve_on_any_count(preset):
  n = 1 if preset == "single" else 8
  shape = parallel.resolve_mesh_shape(PRESETS[preset]["ici"], n)
  assert shape[0] * shape[1] * shape[2] == n


def test_dcn_sizes_must_match_the_slices():
  t = topology.get("2xv5e-256")
  devices = topology.fake_devices(t)
  with pytest.raises(ConfigError, match="make 4 slices / nodes"):
    parallel.make_mesh((16, 16, 1), devices, (4, 1, 1))
  with pytest.raises(ConfigError, match="3 slices / nodes, which does not divide the 512"):
    parallel.resolve_mesh_shape({"data": 1, "fsdp": -1, "tensor": 1, "dcn_data": 3}, 512)


def test_make_mesh_on_the_simulated_host():
  mesh = parallel.make_mesh((2, 2, 2))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert jax.device_count() == 8
