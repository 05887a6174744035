"""Workdir config: saved and reloaded, older workdirs load, model identity is compared."""

import json

import pytest

from conftest import family_config
from plm_jax import checkpoint
from plm_jax.errors import CheckpointError


def test_config_round_trip(tmp_path):
  config = family_config("gpt")
  checkpoint.save_config(str(tmp_path), config)
  loaded = checkpoint.load_config(str(tmp_path))
  assert loaded.to_dict() == config.to_dict()
  assert checkpoint.identity_mismatches(loaded, config) == []


def test_workdir_from_before_a_field_existed_still_loads(tmp_path):
  config = family_config("bert")
  checkpoint.save_config(str(tmp_path), config)
  path = tmp_path / checkpoint.CONFIG_FILE
  raw = json.loads(path.read_text())
  del raw["train"]["prng_impl"]
  path.write_text(json.dumps(raw))
  loaded = checkpoint.load_config(str(tmp_path))
  assert loaded.train.prng_impl == "threefry2x32"
  assert loaded.model.hidden_size == config.model.hidden_size


def test_identity_mismatches_name_the_fields():
  a, b = family_config("bert"), family_config("bert", **{"model.num_layers": 3})
  assert checkpoint.identity_mismatches(a, b) == ["model.num_layers: saved 2, now 3"]


def test_corrupt_config_json(tmp_path):
  (tmp_path / checkpoint.CONFIG_FILE).write_text("{not json")
  with pytest.raises(CheckpointError, match="unreadable"):
    checkpoint.load_config(str(tmp_path))
