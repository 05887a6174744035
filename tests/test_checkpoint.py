"""Workdir config: saved and reloaded, older workdirs load, model identity is compared."""

import json
import os

import jax
import numpy as np
import pytest

from helpers import family_config
from plm_jax import workdir
from plm_jax.errors import CheckpointError
from plm_jax.run import checkpoint


def test_config_round_trip(tmp_path):
  config = family_config("gpt")
  workdir.save_config(str(tmp_path), config)
  loaded = workdir.load_config(str(tmp_path))
  assert loaded.to_dict() == config.to_dict()
  assert workdir.identity_mismatches(loaded, config) == []


def test_workdir_from_before_a_field_existed_still_loads(tmp_path):
  config = family_config("bert")
  workdir.save_config(str(tmp_path), config)
  path = tmp_path / workdir.CONFIG_FILE
  raw = json.loads(path.read_text())
  del raw["train"]["prng_impl"]
  path.write_text(json.dumps(raw))
  loaded = workdir.load_config(str(tmp_path))
  assert loaded.train.prng_impl == "auto"
  assert loaded.model.hidden_size == config.model.hidden_size


def test_identity_mismatches_name_the_fields():
  a, b = family_config("bert"), family_config("bert", **{"model.num_layers": 3})
  assert workdir.identity_mismatches(a, b) == ["model.num_layers: saved 2, now 3"]


def test_corrupt_config_json(tmp_path):
  (tmp_path / workdir.CONFIG_FILE).write_text("{not json")
  with pytest.raises(CheckpointError, match="unreadable"):
    workdir.load_config(str(tmp_path))


def test_checkpoint_of_another_shape_is_named_foreign_and_a_broken_one_corrupt(tmp_path):
  """The kind of failure comes from the checkpoint's metadata, not from an error's wording."""
  state = {"params": {"w": jax.numpy.ones((4, 2)), "b": jax.numpy.zeros((2,))},
           "opt_state": {"n": jax.numpy.zeros(())}}
  with checkpoint.make_manager(str(tmp_path), async_save=False) as manager:
    checkpoint.save(manager, 1, state, {})
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  shardings = jax.tree.map(lambda _: sharding, state)
  other = {"params": {"w": jax.ShapeDtypeStruct((4, 3), "float32"),
                      "b": jax.ShapeDtypeStruct((2,), "float32")},
           "opt_state": {"n": jax.ShapeDtypeStruct((), "float32")}}
  with checkpoint.make_manager(str(tmp_path), read_only=True) as manager:
    with pytest.raises(CheckpointError, match=r"w has shape \(4, 2\), the model \(4, 3\)\); "
                                              "it was written by a different model"):
      checkpoint.restore(manager, 1, other, shardings)
  data = tmp_path / "checkpoints" / "1" / "params" / "d"
  for f in data.iterdir():
    f.unlink()
  same = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  with checkpoint.make_manager(str(tmp_path), read_only=True) as manager:
    with pytest.raises(CheckpointError, match="checkpoints/1 is corrupt or incomplete"):
      checkpoint.restore(manager, 1, same, shardings)


def test_a_resumed_writer_keeps_one_record_per_step_and_purges_tensorboard(tmp_path):
  """Records past the restored step are dropped (a torn last line too); TensorBoard is told to
  discard the events of steps after it (a SessionLog START at resume_step + 1)."""
  import glob
  import struct
  from tensorboardX.proto import event_pb2
  from plm_jax.run.metrics_writer import MetricsWriter
  writer = MetricsWriter(str(tmp_path))
  for step in range(1, 6):
    writer.write(step, "train", {"loss": float(step)})
  writer.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 6, "spl')                  # a crash mid-write
  writer = MetricsWriter(str(tmp_path), resume_step=3)
  writer.write(4, "train", {"loss": 40.0})
  writer.close()
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [(l["step"], l["split"]) for l in lines] == [(1, "train"), (2, "train"), (3, "train"),
                                                       (3, "resume"), (4, "train")]
  assert lines[3]["dropped_records"] == 3 and lines[4]["loss"] == 40.0

  def events(path):
    data = open(path, "rb").read()
    out, at = [], 0
    while at < len(data):
      (length,) = struct.unpack("<Q", data[at:at + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[at + 12:at + 12 + length])
      out.append(event)
      at += 12 + length + 4
    return out
  files = sorted(glob.glob(str(tmp_path / "tensorboard" / "events.*")), key=os.path.getmtime)
  restarted = events(files[-1])
  starts = [e.step for e in restarted if e.HasField("session_log")
            and e.session_log.status == event_pb2.SessionLog.START]
  assert starts == [4]


def _separate_qkv(d: dict) -> dict:
  """The layout before the fused projection (unrolled layers), written independently of
  plm_jax.run.checkpoint."""
  if "qkv" not in d:
    return d
  out = {k: v for k, v in d.items() if k != "qkv"}
  for i, name in enumerate(("query", "key", "value")):
    out[name] = {"kernel": np.asarray(d["qkv"]["kernel"])[:, i],
                 "bias": np.asarray(d["qkv"]["bias"])[i]}
  return out


@pytest.mark.parametrize("saved,restored", [("unrolled", "stacked"), ("stacked", "unrolled"),
                                            ("separate_qkv", "stacked")])
def test_a_checkpoint_of_another_layout_restores(tmp_path, saved, restored):
  """Checkpoints of unrolled layers restore into stacked ones and back, and those from before
  the fused q/k/v projection too: same values, this model's shardings, on another mesh."""
  from plm_jax import parallel
  from plm_jax.trainer import Trainer

  def trainer(scan, **mesh):
    config = family_config("bert", **{"model.scan_layers": scan,
                                      **{f"mesh.{k}": v for k, v in mesh.items()}})
    return Trainer.create(config, parallel.mesh_for(config), 256)

  writer = trainer(saved == "stacked", fsdp=8)
  state = writer.init_state(0)
  old = {k: jax.device_get(state[k]) for k in ("params", "opt_state")}
  if saved == "separate_qkv":
    old = {k: checkpoint._tree_map_dicts(v, _separate_qkv) for k, v in old.items()}
    assert "query" in old["params"]["encoder"]["layers"][0]["attention"]
  with checkpoint.make_manager(str(tmp_path), async_save=False) as manager:
    checkpoint.save(manager, 5, old, {"tokens": 1})
  reader = trainer(restored == "stacked", fsdp=4, tensor=2)
  with checkpoint.make_manager(str(tmp_path), read_only=True) as manager:
    got, meta = reader.restore_state(manager, 5)
  assert meta == {"tokens": 1}
  expected = reader.init_state(0)          # one seed: the same weights in every layout
  for k in ("params", "opt_state"):
    assert jax.tree.structure(got[k]) == jax.tree.structure(expected[k])
    for a, b in zip(jax.tree.leaves(expected[k]), jax.tree.leaves(got[k])):
      assert a.sharding.is_equivalent_to(b.sharding, a.ndim)
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
