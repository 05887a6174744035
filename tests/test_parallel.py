"""Mesh from the config and validation errors that name the field and a value that works."""

import jax
import pytest

from conftest import family_config
from plm_jax import parallel
from plm_jax.configlib import MESH_PRESETS
from plm_jax.errors import ConfigError


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
    parallel.validate(config, 8)


def test_heads_not_divisible_by_tensor():
  config = family_config("gpt", **{"model.num_heads": 4, "mesh.fsdp": -1, "mesh.tensor": 8})
  with pytest.raises(ConfigError, match=r"num_heads=4 is not divisible by mesh.tensor=8; use "
                                        r"--config.mesh.tensor=4"):
    parallel.validate(config, 8)


def test_objective_must_match_family():
  config = family_config("gpt", **{"objective.name": "mlm_nsp"})
  with pytest.raises(ConfigError, match="use --config.objective.name=causal_lm"):
    parallel.validate(config, 8)


def test_sequence_longer_than_positions():
  config = family_config("bert", **{"data.max_seq_length": 256})
  with pytest.raises(ConfigError, match="max_position=128"):
    parallel.validate(config, 8)


@pytest.mark.parametrize("preset", sorted(MESH_PRESETS))
def test_presets_resolve_on_their_device_counts(preset):
  sizes = MESH_PRESETS[preset]
  n = {"auto": 8, "single": 1, "dp": 8}.get(preset) or abs(
      sizes["data"] * sizes["fsdp"] * sizes["tensor"])
  shape = parallel.resolve_mesh_shape(sizes, n)
  assert shape[0] * shape[1] * shape[2] == n


def test_make_mesh_on_the_simulated_host():
  mesh = parallel.make_mesh((2, 2, 2))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert jax.device_count() == 8
