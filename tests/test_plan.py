"""`plm-jax plan`: per-device bytes checked against hand computations; layouts refused with
values that fit; every preset fits the hardware it is sized for."""

import importlib
import re

import jax
import jax.numpy as jnp
import pytest

from plm_jax import cli, configs
from plm_jax.sizing import residuals
from plm_jax.errors import ConfigError
from plm_jax.hardware.mesh_presets import for_topology
from plm_jax.sizing.plan import make_plan


def config_of(family_file, arg, **overrides):
  from configs import bert, gpt
  config = {"bert": bert, "gpt": gpt}[family_file].get_config(arg)
  for dotted, value in overrides.items():
    section, field = dotted.split(".")
    config[section][field] = value
  return config


def test_gpt2_1_5b_on_v5e_256_by_hand():
  config = config_of("gpt", "1.5b,mesh=tpu-v5e-256", **{"model.dtype": "bfloat16",
                                                       "model.remat": True,
                                                       "optim.grad_accum_steps": 2})
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
  # the references' convention: 6 N T (N without the embeddings) + 12 L d T T per sequence,
  # 512 x 1024 tokens per step
  n = p.parameters - vocab * h - positions * h
  assert p.reference_flops_per_step == pytest.approx(
      (6 * n + 12 * layers * h * 1024) * 512 * 1024)
  # as computed: the layers' matrix products (the scores made again in the backward: 14 L d T)
  # and the tied LM head at every token; elementwise work is under 1% at this width
  products = layers * (6 * (4 * h * h + 2 * h * mlp) + 14 * h * 1024) + 6 * vocab * h
  assert p.flops_per_step == pytest.approx(products * 512 * 1024, rel=0.01)
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
        "model.dtype": "float32", "train.batch_size": 1024, "optim.grad_accum_steps": 1}),
        "v5e-256")
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
  # 124m's 4 micro-batches are for one H100; 512 chips take one sequence each in one
  assert cli.main(["plm-jax", "plan", "--config", f"{gpt}:124m,mesh=tpu-2xv5e-256",
                   "--topology", "2xv5e-256", "--config.model.dtype=bfloat16",
                   "--config.optim.grad_accum_steps=1"]) == 0
  out = capsys.readouterr().out
  assert "mesh {'data': 32, 'fsdp': 16, 'tensor': 1}" in out and "128 process(es)" in out
  assert cli.main(["plm-jax", "plan", "--config", f"{gpt}:124m"]) == 2
  assert "--topology NAME or --devices N" in capsys.readouterr().err


def test_activations_follow_the_attention_kernel_and_the_loss_chunks():
  """The output layer's logits exist one chunk of objective.loss_chunk rows at a time, in the
  compute dtype; the XLA kernel (scores rematerialised) adds one layer's [b, N, T, T] float32
  scores and probabilities in the backward pass, the fused kernels none."""
  chunked = make_plan(config_of("gpt", "124m,mesh=gpu8", **{"objective.loss_chunk": 1024}),
                      "8xh100")
  whole = make_plan(config_of("gpt", "124m,mesh=gpu8", **{"objective.loss_chunk": 0}),
                    "8xh100")
  b, heads, t, vocab = chunked.micro_batch, 12, 1024, 50304
  assert b == 512 // 8 // 8                                        # 8 micro-batches
  assert whole.activation_bytes - chunked.activation_bytes == (b * t - 1024) * vocab * 2
  config = config_of("gpt", "124m,mesh=gpu8")
  fused = residuals.activation_bytes(config, b, vocab, "gpu", 1024, vocab)
  config.model.attention_impl = "xla"
  xla = residuals.activation_bytes(config, b, vocab, "gpu", 1024, vocab)
  assert (fused["scores"], xla["scores"]) == (0, 2 * b * heads * t * t * 4)


def test_attention_dropout_keeps_every_layers_scores():
  """No fused kernel has attention dropout: the explicit softmax path keeps, for every layer,
  the float32 softmax output, the probabilities in the compute dtype and the dropout mask
  (Korthikanti et al.'s 5as^2b): at least 7 bytes per score in bfloat16, found in the traced
  residuals, not assumed."""
  base = make_plan(config_of("gpt", "124m,mesh=gpu8"), "8xh100")
  dropped = make_plan(config_of("gpt", "124m,mesh=gpu8",
                                **{"model.attention_dropout_rate": 0.1}), "8xh100")
  b, heads, t, layers = base.micro_batch, 12, 1024, 12
  assert dropped.activation_bytes - base.activation_bytes >= layers * b * heads * t * t * 7


def test_traced_residuals_are_what_autodiff_keeps():
  """saved_bytes sums the residuals of a function known by hand: sin's cosine and the mask
  cast for the product, both bfloat16 [8, 16]; the argument itself is not counted."""

  def f(x):
    y = x.astype(jnp.bfloat16)
    return jnp.sum(jnp.sin(y) * (x > 0))

  assert residuals.saved_bytes(f, jax.ShapeDtypeStruct((8, 16), jnp.float32)) == 2 * 8 * 16 * 2


def sized_presets() -> list[tuple[str, str, str]]:
  """(config file, size, topology) of every size row that names its target hardware (a
  `-paper` row identical to its size's row but for the name is the same plan)."""
  out = []
  for name in configs.PRESETS:
    sizes = getattr(importlib.import_module(f"plm_jax.configs.{name}"), "SIZES", {})
    for size, row in sizes.items():
      plain = sizes[size.removesuffix("-paper")]
      if row.get("target") and (plain is row or plain != row):
        out.append((name, size, row["target"]))
  return out


SIZED = sized_presets()


def test_the_sized_presets_cover_every_family_file_with_sizes():
  assert {name for name, _, _ in SIZED} == {
      n for n in configs.PRESETS
      if hasattr(importlib.import_module(f"plm_jax.configs.{n}"), "SIZES")}
  assert len(SIZED) >= 20


@pytest.mark.parametrize("name,size,target", SIZED, ids=[f"{n}:{s}@{t}" for n, s, t in SIZED])
def test_every_sized_preset_fits_its_target(name, size, target):
  """As a user runs it: `plm-jax plan --config NAME:SIZE,mesh=M --topology TARGET`, with the
  paper's global batch and the row's micro-batches."""
  config = importlib.import_module(f"plm_jax.configs.{name}").get_config(
      f"{size},mesh={for_topology(target)}")
  p = make_plan(config, target)
  assert p.total_bytes <= 0.9 * p.device_bytes


def proposed(message: str) -> list[list[str]]:
  """The flag sets of a refusal's "fits with A (...), or B (...)"."""
  tail = message.split("fits with ", 1)[1]
  return [re.findall(r"--config\.\w+\.\w+=\S+", part) for part in tail.split(", or ")]


@pytest.mark.parametrize("args,first", [
    # the reported case: the paper's 512 x 1024 tokens on one H100 in one micro-batch
    (["gpt:124m", "--topology", "1xh100", "--config.optim.grad_accum_steps=1"],
     ["--config.optim.grad_accum_steps=8"]),
    # a batch that does not split into the preset's micro-batches over 512 chips
    (["gpt:124m,mesh=tpu-2xv5e-256", "--topology", "2xv5e-256"],
     ["--config.optim.grad_accum_steps=1"]),
    # states, not activations: only a wider fsdp axis helps
    (["gpt:774m,mesh=dp", "--topology", "8xh100", "--hbm-gib", "12",
      "--config.train.batch_size=8", "--config.optim.grad_accum_steps=1"],
     ["--config.mesh.data=2", "--config.mesh.fsdp=4"]),
])
def test_a_refusal_proposes_values_that_plan_accepts(capsys, args, first):
  config, *rest = args
  command = ["plm-jax", "plan", "--config", config, *rest]
  assert cli.main(command) == 2
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and "fits with" in err, err
  flag_sets = proposed(err)
  assert flag_sets[0] == first
  for flags in flag_sets:                              # each proposal, applied, is accepted
    assert cli.main(command + flags) == 0, (flags, capsys.readouterr().err)
    capsys.readouterr()


def test_a_two_phase_run_is_planned_at_both_lengths():
  """bert:base-paper's phase 2 is the plan of the same run at 512 tokens, 80 predictions and
  its 4 micro-batches, written out by hand; without them phase 2 does not fit one H100, and the
  refusal proposes phase 2's own micro-batches."""
  p = make_plan(config_of("bert", "base-paper,mesh=dp"), "1xh100")
  by_hand = config_of("bert", "base-paper,mesh=dp")
  by_hand.data.phase2_seq_length = 0
  by_hand.data.max_seq_length = 512
  by_hand.objective.max_predictions = 80
  by_hand.optim.grad_accum_steps = 4
  second = make_plan(by_hand, "1xh100")
  assert p.phase2["total_bytes"] == second.total_bytes > p.total_bytes
  assert p.phase2["flops_per_step"] == second.flops_per_step
  assert (p.phase2["from_step"], p.phase2["seq_len"], p.micro_batch) == (900_000, 512, 256)
  too_big = config_of("bert", "base-paper,mesh=dp")
  too_big.optim.phase2_grad_accum_steps = 0
  with pytest.raises(ConfigError, match=r"^phase 2 \(512 tokens.*does not fit.*"
                                        r"--config\.optim\.phase2_grad_accum_steps=4"):
    make_plan(too_big, "1xh100")
