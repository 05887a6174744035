"""The activation memory of a train step, from the tensors autodiff keeps for its backward pass.

`plm-jax plan` used a formula (Korthikanti et al., 2022) that XLA's TPU compiler showed 33-38%
short (GPT-2 124M, XLNet-large) or more (ALBERT-xxlarge's shared layer: 2.5x): the real step
keeps float32 LayerNorm and GELU intermediates, dropout masks, XLNet's two streams and memory,
none of which a per-layer constant knows. Instead the loss of the very model the run builds is
traced abstractly (nothing is computed or allocated) and `jax.ad_checkpoint`'s list of saved
residuals is summed: exact for what the backward pass keeps, for every family, objective,
remat and attention kernel. Four traces fit residuals(rows, layers) = rows x (a + L b) + (c + L d)
(a scanned layer is traced once, so any depth costs the same), cached per model.

The step's peak adds to what is kept, per device:
- the backward pass of one layer: its residuals (recomputed under remat) and their float32
  gradients, three times one layer's residuals without remat;
- the XLA attention kernel's scores and probabilities of one layer, [b, N, T, T] float32 twice
  (it rematerialises them, so they are not residuals);
- the output layer's logits in the compute dtype for one loss chunk of rows.
The factor of three and the logits' bytes are calibrated against XLA's TPU compiler on the TPU
presets (README, "Compiling for TPUs without one"): within 15% of `compiled_gib` for each.

Fused kernels (cuDNN, splash) keep q, k, v, the output and the softmax statistics; both are
traced as splash in Pallas interpret mode (the same residuals), since cuDNN cannot be traced
without a GPU.
"""

import contextlib
import copy
import io
import json
import re

import jax
import numpy as np
from flax import nnx
from jax import ad_checkpoint

from plm_jax import families, objectives
from plm_jax.hardware import accelerator
from plm_jax.data import loader
from plm_jax.models import splash
from plm_jax.families import model_config

_SAVED = re.compile(r"^(\w+)\[([\d,]*)\]\s+(.*)$")
_BYTES = {"bool": 1, "i8": 1, "u8": 1, "i16": 2, "u16": 2, "f16": 2, "bf16": 2, "i32": 4,
          "u32": 4, "f32": 4, "i64": 8, "u64": 8, "f64": 8}
BACKWARD_LAYERS = 3            # one layer's residuals + their float32 gradients (calibrated)
_CACHE: dict[str, tuple[float, float, float, float]] = {}


def saved_bytes(fn, *args) -> int:
  """Bytes of the residuals autodiff saves for fn's backward pass, the arguments excluded
  (parameters and batch are counted where they live)."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    ad_checkpoint.print_saved_residuals(fn, *args)
  total = 0
  for line in out.getvalue().splitlines():
    m = _SAVED.match(line.strip())
    if not m or m.group(3).startswith("from the argument") or m.group(1) not in _BYTES:
      continue
    dims = [int(d) for d in m.group(2).split(",") if d]
    total += _BYTES[m.group(1)] * int(np.prod(dims, dtype=np.int64))
  return total


def traced_kernel(config, platform: str) -> str:
  """The kernel the target runs, as traced here: cuDNN's residuals are splash's."""
  dtype = accelerator.compute_dtype(config.model.dtype, platform)
  kernel = accelerator.attention_impl(config.model.attention_impl, platform, dtype)
  if kernel in ("cudnn", "splash"):
    return "splash" if splash.supports(config.data.max_seq_length) else "xla"
  return kernel


def _trace(config, rows: int, layers: int, vocab: int, platform: str, remat: bool) -> int:
  c = copy.deepcopy(config)
  c.train.batch_size, c.optim.grad_accum_steps = rows, 1
  c.model.num_layers, c.model.remat = layers, remat
  with accelerator.targeting(platform):
    kernel = traced_kernel(c, platform)
    c.model.attention_impl = kernel
    mcfg = model_config(c, vocab)
    prng = accelerator.prng_impl(c.train.prng_impl)
  graphdef, params = nnx.split(nnx.eval_shape(lambda: families.build(mcfg, nnx.Rngs(0))),
                               nnx.Param)
  params = nnx.to_pure_dict(params)
  batch = {k: jax.ShapeDtypeStruct(s, d) for k, (s, d) in loader.batch_shapes(c).items()}
  objective = objectives.for_config(c)

  def loss(p, b):
    stats = objective.stats(nnx.merge(graphdef, p), b,
                            dropout_rng=jax.random.key(0, impl=prng))
    return objective.loss(stats, objective.totals(b))

  return saved_bytes(loss, params, batch)


def _model(config, vocab: int, platform: str, remat: bool) -> tuple[float, float, float, float]:
  """(a, b, c, d) of residuals(rows, L) = rows (a + L b) + c + L d, from four traces at 1 and 2
  rows and 2 and 4 layers (a stack of one layer is not scanned, so it is not on the line)."""
  # every group but what leaves the traced loss alone (a kind's group sizes its head)
  fields = {k: config[k].to_dict() for k in config.keys()
            if k not in ("train", "optim", "bench", "checkpoint", "mesh")}
  fields["train.prng_impl"] = config.train.prng_impl
  key = json.dumps([fields, vocab, platform, remat], sort_keys=True, default=str)
  if key not in _CACHE:
    r = {(n, L): _trace(config, n, L, vocab, platform, remat) for n in (1, 2) for L in (2, 4)}
    per_row_layer = (r[2, 4] - r[1, 4] - (r[2, 2] - r[1, 2])) / 2
    per_layer = (r[1, 4] - r[1, 2]) / 2 - per_row_layer
    per_row = (r[2, 2] - r[1, 2]) - 2 * per_row_layer
    fixed = r[1, 2] - per_row - 2 * per_row_layer - 2 * per_layer
    _CACHE[key] = (per_row, per_row_layer, fixed, per_layer)
  return _CACHE[key]


def activation_bytes(config, rows: int, vocab: int, platform: str, logits_rows: int,
                     vocab_shard: int) -> dict:
  """Per device, for `rows` rows of a micro-batch: {"kept", "backward", "scores", "logits"}."""
  m = config.model
  a, b, c, d = _model(config, vocab, platform, m.remat)
  kept = rows * (a + m.num_layers * b) + c + m.num_layers * d
  a0, b0, c0, d0 = (a, b, c, d) if not m.remat else _model(config, vocab, platform, False)
  backward = BACKWARD_LAYERS * (rows * b0 + d0)
  scores = 0
  t = config.data.max_seq_length
  if traced_kernel(config, platform) == "xla" and not objectives.of(config).permuted:
    scores = 2 * rows * m.num_heads * t * t * 4        # one layer's, made again in backward
  dtype = accelerator.compute_dtype(m.dtype, platform)
  logits = logits_rows * vocab_shard * (2 if dtype in ("bfloat16", "float16") else 4)
  return {"kept": int(kept), "backward": int(backward), "scores": int(scores),
          "logits": int(logits)}
