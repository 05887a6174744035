"""`plm-jax plan`: per-device bytes checked against hand computations; layouts refused."""

import pytest

from plm_jax import cli
from plm_jax.errors import ConfigError
from plm_jax.plan import make_plan


def config_of(family_file, arg, **overrides):
  from configs import bert, gpt
  config = {"bert": bert, "gpt": gpt}[family_file].get_config(arg)
  for dotted, value in overrides.items():
    section, field = dotted.split(".")
    config[section][field] = value
  return config


def test_gpt2_1_5b_on_v5e_256_by_hand():
  config = config_of("gpt", "1.5b,mesh=tpu-v5e-256", **{"model.dtype": "bfloat16",
                                                       "model.remat": True})
  p = make_plan(config, "v5e-256")
  assert p.mesh == {"data": 16, "fsdp": 16, "tensor": 1} and p.num_processes == 64
  h, layers, vocab, positions, mlp, fsdp = 1600, 48, 50304, 1024, 6400, 16
  # Every tensor with the hidden dimension is split 16 ways over fsdp; the q/k/v biases and
  # the MLP's first bias (heads / mlp axes, tensor = 1) are replicated. float32 storage.
  per_layer_split = (2 * h            # LayerNorm before attention
                     + 3 * h * h      # q, k, v kernels
                     + h * h + h      # attention output kernel + bias
                     + 2 * h          # LayerNorm before the MLP
                     + h * mlp        # MLP in
                     + mlp * h + h)   # MLP out + bias
  per_layer_replicated = 3 * h + mlp
  split = vocab * h + positions * h + layers * per_layer_split + 2 * h
  replicated = layers * per_layer_replicated
  params_bytes = 4 * (split // fsdp + replicated)
  assert p.param_bytes == params_bytes
  assert p.opt_bytes == 2 * params_bytes + 2 * 4      # Adam mu + nu, and two step counters
  assert p.parameters == split + replicated
  assert p.per_device_batch == 2                       # 512 / (16 x 16)
  # 6 N T (N without the embeddings) + 12 L d T T per sequence, 512 x 1024 tokens per step
  n = p.parameters - vocab * h - positions * h
  assert p.flops_per_step == pytest.approx((6 * n + 12 * layers * h * 1024) * 512 * 1024)
  assert p.step_time_s == pytest.approx(p.flops_per_step / (256 * 197e12 * 0.4))


def test_bert_large_on_8_h100_by_hand():
  p = make_plan(config_of("bert", "large,mesh=gpu8"), "8xh100")
  assert p.mesh == {"data": 1, "fsdp": 8, "tensor": 1}
  h, layers, vocab, positions, mlp, fsdp = 1024, 24, 30592, 512, 4096, 8
  per_layer_split = 3 * h * h + h * h + h + 2 * h + h * mlp + mlp * h + h + 2 * h
  per_layer_replicated = 3 * h + mlp
  split = (vocab * h + positions * h + 2 * h + 2 * h        # embeddings + their LayerNorm
           + layers * per_layer_split
           + h * h                                           # pooler kernel
           + h * h + h + 2 * h                               # MLM transform + its LayerNorm
           + 2 * h)                                          # NSP kernel
  replicated = layers * per_layer_replicated + h + vocab + 2   # pooler, MLM, NSP biases
  params_bytes = 4 * (split // fsdp + replicated)
  assert p.param_bytes == params_bytes
  assert p.opt_bytes == 2 * params_bytes + 2 * 4
  assert p.parameters == split + replicated
  assert p.per_device_batch == 32


def test_plans_that_cannot_run_are_refused():
  with pytest.raises(ConfigError, match=r"does not fit: .* GiB per device .* 16 GiB"):
    make_plan(config_of("gpt", "1.5b,mesh=tpu-v5e-256", **{         # float32, no remat
        "model.dtype": "float32", "train.batch_size": 1024}), "v5e-256")
  with pytest.raises(ConfigError, match="num_heads=25 is not divisible by mesh.tensor=2"):
    make_plan(config_of("gpt", "1.5b,mesh=gpu8-tp2"), "8xh100")
  with pytest.raises(ConfigError, match="train.batch_size=100 is not divisible by 8"):
    make_plan(config_of("bert", "large,mesh=gpu8", **{"train.batch_size": 100}), "8xh100")
  with pytest.raises(ConfigError, match="needs 8 devices but 16 are present"):
    make_plan(config_of("bert", "large,mesh=gpu8"), "v4-32")
  with pytest.raises(ConfigError, match="--topology 'v9' is not one of"):
    make_plan(config_of("bert", "large"), "v9")


def test_plan_command_on_a_device_count_and_multislice(capsys):
  gpt = "configs/gpt.py"
  assert cli.main(["plm-jax", "plan", "--config", f"{gpt}:124m", "--devices", "4",
                   "--hbm-gib", "24", "--peak-tflops", "100", "--config.train.batch_size=32"]) == 0
  out = capsys.readouterr().out
  assert "4 devices" in out and "per device 8" in out and "step time" in out
  assert cli.main(["plm-jax", "plan", "--config", f"{gpt}:124m,mesh=tpu-2xv5e-256",
                   "--topology", "2xv5e-256", "--config.model.dtype=bfloat16"]) == 0
  out = capsys.readouterr().out
  assert "mesh {'data': 32, 'fsdp': 16, 'tensor': 1}" in out and "128 process(es)" in out
  assert cli.main(["plm-jax", "plan", "--config", f"{gpt}:124m"]) == 2
  assert "--topology NAME or --devices N" in capsys.readouterr().err


def test_activations_follow_the_attention_kernel_and_the_loss_chunks():
  """On GPUs "auto" is cuDNN (no scores kept) and the output layer goes in chunks of
  objective.loss_chunk tokens; the XLA kernel keeps one layer's scores and probabilities."""
  auto = make_plan(config_of("gpt", "124m,mesh=gpu8"), "8xh100")
  plain = make_plan(config_of("gpt", "124m,mesh=gpu8", **{"model.attention_impl": "xla",
                                                         "objective.loss_chunk": 0}), "8xh100")
  b, heads, t, vocab, chunk = 512 // 8, 12, 1024, 50304, 8192
  scores = 2 * b * heads * t * t * 4
  logits = 2 * (b * t - chunk) * vocab * 4
  assert plain.activation_bytes - auto.activation_bytes == scores + logits
