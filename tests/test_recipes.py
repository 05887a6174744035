"""The published pretraining recipes (`configs/<family>.py:<size>-paper`), value by value
against the papers (numbers copied from them here, not from the configs)."""

import pytest

from plm_jax.configs import albert, bert, gpt, roberta, xlnet
from plm_jax.data import loader, phases
from plm_jax.optim import make_schedule

PAPERS = {
    # Devlin et al. (2018), A.2: 1M steps x 256 sequences, phase 1 at 128 tokens, Adam 1e-4
    # (b1 0.9, b2 0.999), L2 weight decay 0.01, 10k warmup, linear decay, dropout 0.1.
    (bert, "base-paper"): {"train.steps": 1_000_000, "train.batch_size": 256,
                           "data.max_seq_length": 128, "optim.learning_rate": 1e-4,
                           "optim.b2": 0.999, "optim.weight_decay": 0.01,
                           "optim.warmup_steps": 10_000, "optim.schedule": "linear_total",
                           "model.dropout_rate": 0.1, "model.hidden_size": 768,
                           # the released bert_config.json: attention_probs_dropout_prob 0.1
                           "model.attention_dropout_rate": 0.1,
                           # A.2: "we train 90% of the steps with sequence length 128, the
                           # remaining 10% with 512"; the README's max_predictions_per_seq 20
                           # (128) and 80 (512)
                           "data.phase2_seq_length": 512, "data.phase2_from": 0.9,
                           "objective.max_predictions": 20,
                           "objective.phase2_max_predictions": 80},
    (bert, "large-paper"): {"model.num_layers": 24, "optim.learning_rate": 1e-4,
                            "data.max_seq_length": 128, "data.phase2_seq_length": 512,
                            "data.phase2_from": 0.9, "objective.max_predictions": 20,
                            "objective.phase2_max_predictions": 80},
    # Liu et al. (2019), Table 9.
    (roberta, "base-paper"): {"train.steps": 500_000, "train.batch_size": 8192,
                              "data.max_seq_length": 512, "optim.learning_rate": 6e-4,
                              "optim.warmup_steps": 24_000, "optim.b2": 0.98,
                              "optim.eps": 1e-6, "optim.weight_decay": 0.01,
                              "optim.clip_norm": 0.0, "model.attention_dropout_rate": 0.1},
    (roberta, "large-paper"): {"optim.learning_rate": 4e-4, "optim.warmup_steps": 30_000,
                               "model.num_layers": 24},
    # Lan et al. (2019), 4.1.
    (albert, "base-paper"): {"train.steps": 125_000, "train.batch_size": 4096,
                             "data.max_seq_length": 512, "optim.optimizer": "lamb",
                             "optim.learning_rate": 0.00176, "objective.masking": "ngram",
                             "objective.max_ngram": 3, "model.dropout_rate": 0.0,
                             "model.embedding_size": 128,
                             # google-research/albert run_pretraining.py: max_predictions_per_seq
                             # 20; optimization.py: polynomial decay over all steps from step 0
                             "objective.max_predictions": 20, "optim.schedule": "linear_total"},
    # Brown et al. (2020), Table 2.1: 125M, lr 6e-4, 0.5M-token batches, 300B tokens.
    (gpt, "124m-paper"): {"optim.learning_rate": 6e-4, "train.batch_size": 512,
                          "train.steps": 572_204, "optim.warmup_steps": 715,
                          "optim.b2": 0.95, "optim.weight_decay": 0.1,
                          "optim.end_lr_fraction": 0.1, "optim.schedule": "cosine"},
    (gpt, "1.5b-paper"): {"optim.learning_rate": 2e-4, "train.batch_size": 1024},
    # Yang et al. (2019), Table 7.
    (xlnet, "large-paper"): {"train.steps": 500_000,
                             "data.max_seq_length": 512, "model.mem_len": 384,
                             "objective.reuse_len": 256, "objective.plm_k": 6,
                             "optim.learning_rate": 4e-4, "optim.warmup_steps": 40_000,
                             "optim.eps": 1e-6, "optim.weight_decay": 0.01,
                             "model.dropout_rate": 0.1, "model.attention_dropout_rate": 0.1,
                             "model.hidden_size": 1024, "model.num_layers": 24},
}


@pytest.mark.parametrize("module,size", list(PAPERS), ids=lambda x: getattr(x, "__name__", x))
def test_paper_recipes_hold_the_published_values(module, size):
  config = module.get_config(size)
  for dotted, expected in PAPERS[(module, size)].items():
    group, field = dotted.split(".")
    assert config[group][field] == pytest.approx(expected) if isinstance(expected, float) \
        else config[group][field] == expected, dotted
  assert config.model.size == size


def test_xlnet_large_trains_on_the_papers_tokens_per_step():
  """Yang et al. (2019), A.3: batch 8192 of sequence length 512, counted as sequences: a row of
  plm_segments segments holds that many."""
  config = xlnet.get_config("large-paper")
  sequences = config.train.batch_size * loader.segments_per_row(config)
  assert sequences == 8192 and sequences * config.data.max_seq_length == 8192 * 512


def test_bert_attention_dropout_is_the_released_configs():
  transformers = pytest.importorskip("transformers")
  for size in ("base-paper", "large-paper"):
    assert bert.get_config(size).model.attention_dropout_rate == \
        transformers.BertConfig().attention_probs_dropout_prob


def test_albert_predicts_20_positions_and_decays_from_step_0():
  """ALBERT's run_pretraining.py: max_predictions_per_seq = 20 at 512 tokens (the masked
  positions' width; 15% of 512 would be 77); optimization.py: the learning rate is
  polynomial_decay(peak, step, num_train_steps, end 0, power 1) over all steps, replaced by
  peak x step / warmup during the warmup."""
  config = albert.get_config("base-paper")
  assert loader.batch_shapes(config)["masked_positions"][0] == (config.train.batch_size, 20)
  peak, warmup, total = 0.00176, 3125, 125_000
  schedule = make_schedule(config.optim, total)
  for step in (0, 1000, warmup, 60_000, total - 1):
    reference = peak * step / warmup if step < warmup else peak * (1 - step / total)
    assert float(schedule(step)) == pytest.approx(reference, rel=1e-5, abs=1e-10), step


@pytest.mark.parametrize("size", ["base-paper", "large-paper"])
def test_bert_trains_its_last_10_percent_at_512_tokens_on_one_schedule(size):
  """Devlin et al. (2018), A.2: 900k steps at 128 tokens, 100k at 512, the batch unchanged;
  google-research/bert: max_predictions_per_seq 20 and 80, one polynomial decay over all
  num_train_steps from step 0 (the phase-2 run restarts nothing)."""
  config = bert.get_config(size)
  assert phases.switch_step(config) == 900_000
  widths = [(c.data.max_seq_length, loader.batch_shapes(c)["masked_positions"][0])
            for c in (phases.phase_config(config, p) for p in (1, 2))]
  assert widths == [(128, (256, 20)), (512, (256, 80))]
  peak, warmup, total = 1e-4, 10_000, 1_000_000
  schedule = make_schedule(config.optim, config.train.steps)
  for step in (899_999, 900_000, 950_000):          # the switch does not touch the schedule
    assert float(schedule(step)) == pytest.approx(peak * (1 - step / total), rel=1e-5), step
