"""BERT's two phases in one run (plm_jax/data/phases.py): the switch of length, one schedule,
resumes on either side of the switch."""

import json
import os

import numpy as np
import pytest

from helpers import family_config
from plm_jax import checks
from plm_jax.commands import evaluate, pretrain
from plm_jax.data import loader, phases, pipeline
from plm_jax.errors import ConfigError
from plm_jax.run import checkpoint

STEPS, SWITCH, BATCH = 6, 3, 8


def phased_config(tokenizers_dir, **extra):
  return family_config("bert", **{
      "train.steps": STEPS, "train.batch_size": BATCH, "checkpoint.every": 2,
      "data.max_seq_length": 32, "data.phase2_seq_length": 64, "data.phase2_from": 0.5,
      "objective.phase2_max_predictions": 12, "data.tokenizer": tokenizers_dir["bert"],
      **extra})


def train_lines(workdir):
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return [l for l in lines if l["split"] == "train"]


def test_phase_configs_and_the_switch(tokenizers_dir):
  config = phased_config(tokenizers_dir)
  assert phases.switch_step(config) == SWITCH                    # round(0.5 x 6)
  second = phases.phase_config(config, 2)
  assert (second.data.max_seq_length, loader.predictions_per_sequence(second)) == (64, 12)
  first = phases.phase_config(config, 1)
  # phase 1 keeps the objective's own count: ceil(15% of 32) = 5
  assert (first.data.max_seq_length, loader.predictions_per_sequence(first)) == (32, 5)
  assert [phases.phase_after(config, d) for d in (0, SWITCH, SWITCH + 1, STEPS)] == [1, 1, 2, 2]


def test_phased_batches_switch_streams_and_keep_each_position(tokenizers_dir):
  config = phased_config(tokenizers_dir)
  one_phase = [phases.phase_config(config, p) for p in (1, 2)]
  first = pipeline.prepare_in_memory(one_phase[0])
  second = pipeline.prepare_in_memory(one_phase[1], first.tokenizer)
  streams = [loader.Batches(c, d, loader.TRAIN, process_index=0, process_count=1)
             for c, d in zip(one_phase, (first, second))]
  phased = phases.PhasedBatches(*streams, SWITCH)
  widths = [phased.batch(s)["input_ids"].shape[1] for s in range(STEPS)]
  assert widths == [32] * SWITCH + [64] * (STEPS - SWITCH)
  assert phased.batch(SWITCH)["masked_positions"].shape == (BATCH, 12)
  # phase 2's stream counts from the switch: run step 4 is its step 1
  np.testing.assert_array_equal(phased.batch(4)["input_ids"], streams[1].batch(1)["input_ids"])
  assert phased.state_at(4) == {"next_index": 4, "next_example": BATCH, "phase": 2}
  assert phased.state_at(1) == {"next_index": 1, "next_example": BATCH, "phase": 1}
  # a state saved in either phase (through JSON, as in a checkpoint) resumes the same batches
  for step in (1, SWITCH, 5):
    iterator = phased.iterator(json.loads(json.dumps(phased.state_at(step))))
    try:
      np.testing.assert_array_equal(next(iterator)["input_ids"], phased.batch(step)["input_ids"])
    finally:
      iterator.close()


@pytest.mark.parametrize("field,value,words", [
    ("data.phase2_seq_length", 256, "exceeds model.max_position=128"),
    ("data.phase2_from", 1.0, "must be in (0, 1)"),
    ("train.steps", 1, "leaves phase 1 no step")])
def test_a_second_phase_that_cannot_run_is_refused(tokenizers_dir, field, value, words):
  config = phased_config(tokenizers_dir, **{field: value})
  with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
    checks.validate_data(config)


@pytest.mark.e2e
def test_two_phases_resume_on_either_side_of_the_switch(tmp_path, tokenizers_dir, monkeypatch):
  config = phased_config(tokenizers_dir)
  straight_dir = str(tmp_path / "straight")
  straight_final = pretrain.train(config, straight_dir)
  straight = train_lines(straight_dir)
  # the learning rate is the one-phase run's schedule over all the steps (independent of the
  # switch): compared with a run of the same config at one length
  single_dir = str(tmp_path / "single")
  pretrain.train(phased_config(tokenizers_dir, **{"data.phase2_seq_length": 0}), single_dir)
  np.testing.assert_allclose([l["learning_rate"] for l in straight],
                             [l["learning_rate"] for l in train_lines(single_dir)], rtol=1e-7)

  original = loader.Batches.batch

  def crash_at(length, local_step):
    def batch(self, step):
      if (self.split == loader.TRAIN and self.config.data.max_seq_length == length
          and step == local_step):
        raise RuntimeError("simulated preemption")
      return original(self, step)
    return batch

  workdir = str(tmp_path / "resumed")
  # 1: stopped before the switch (checkpoint 2); 2: resumed there, on through the switch,
  # stopped in phase 2 (checkpoint 4, phase 2's step 1); 3: resumed in phase 2
  for length, local_step in ((32, 2), (64, 1)):
    monkeypatch.setattr(loader.Batches, "batch", crash_at(length, local_step))
    with pytest.raises(RuntimeError, match="simulated preemption"):
      pretrain.train(config, workdir)
  monkeypatch.setattr(loader.Batches, "batch", original)
  meta = checkpoint.read_meta(checkpoint.make_manager(workdir, read_only=True), 4)
  # the position in phase 2's own stream: one batch past the switch
  assert meta["data_iterator"] == {"next_index": 4, "next_example": BATCH, "phase": 2}
  final = pretrain.train(config, workdir)
  resumed = train_lines(workdir)
  assert [l["step"] for l in resumed] == list(range(1, STEPS + 1))
  np.testing.assert_allclose([l["loss"] for l in resumed], [l["loss"] for l in straight],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(final["loss"], straight_final["loss"], rtol=1e-5)
  # `plm-jax evaluate` of the finished run reads the last phase's length, as its final eval
  np.testing.assert_allclose(evaluate.evaluate(workdir)["loss"], final["loss"], rtol=1e-5)
