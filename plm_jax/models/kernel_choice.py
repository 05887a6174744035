"""Which attention kernel each attention call runs, and why: one table, decided per call.

`model.attention_impl` names the kernel a run would like (resolved from "auto" by
plm_jax/hardware/accelerator.py); each call then takes it only where the kernel takes that call, and
XLA's attention otherwise. The conditions are read from jax 0.10's own checks
(jax/_src/cudnn/fused_attention_stablehlo.py: check_layout, check_is_flash_attention;
jax/_src/nn/functions.py: dot_product_attention) and the splash kernel's tiles:

| kernel | takes, in training                                   | goes to XLA instead            |
| ------ | ---------------------------------------------------- | ------------------------------ |
| cudnn  | bfloat16 / float16 q, k, v                           | float32 compute                |
| cudnn  | head dim a multiple of 8, at most 128 (256 on Hopper and later: sm_90+) | other head dims |
| cudnn  | no mask, causal, padding as sequence lengths, or both (the kernel's own mask types) | packed rows (segment ids): jax would pass them as a [B, 1, T, T] bias, whose gradient it always computes, and which raises NotImplementedError for an odd T in training |
| cudnn  | any T with the mask types above                      |                                |
| splash | T a multiple of 128 (its tile), any mask (segments)  | other lengths                  |
| any    |                                                      | attention dropout in training (no fused kernel has it: the explicit softmax path) |

XLNet's two-stream relative attention has its own explicit softmax and is recorded as such.
While `recording()` is open, every traced call writes its choice there, so `bench` and `train`
print what each attention of the compiled step actually uses, not what the config asked for.
"""

import contextlib
import contextvars
import dataclasses

CUDNN_DTYPES = ("bfloat16", "float16")
CUDNN_HEAD_DIM = 128            # sm_90+ (Hopper, Blackwell) take up to 256
CUDNN_HEAD_DIM_HOPPER = 256
SPLASH_TILE = 128


@dataclasses.dataclass(frozen=True)
class AttentionCall:
  """What a kernel needs to know of one attention call (all static at trace time)."""
  length: int                    # T (queries) = S (keys)
  head_dim: int
  dtype: str                     # of q, k, v
  causal: bool
  padding: bool                  # right-padded rows (-> sequence lengths)
  segments: bool                 # packed rows: several sequences per row
  dropout: bool                  # attention-probability dropout active (training)


@dataclasses.dataclass(frozen=True)
class Choice:
  kernel: str                    # "xla", "cudnn", "splash" or "xla-explicit"
  why: str

  def __str__(self) -> str:
    return f"{self.kernel} ({self.why})"


def choose(requested: str | None, call: AttentionCall, hopper: bool = False) -> Choice:
  """The kernel `call` runs when `requested` ("xla", "cudnn", "splash") is asked for."""
  mask = _mask_text(call)
  if call.dropout:
    return Choice("xla-explicit", "attention dropout: no fused kernel has it")
  if requested == "splash":
    if call.length % SPLASH_TILE:
      return Choice("xla", f"splash needs T a multiple of {SPLASH_TILE}, T={call.length}")
    return Choice("splash", mask)
  if requested == "cudnn":
    limit = CUDNN_HEAD_DIM_HOPPER if hopper else CUDNN_HEAD_DIM
    if call.dtype not in CUDNN_DTYPES:
      return Choice("xla", f"cuDNN takes 16-bit inputs, not {call.dtype}")
    if call.head_dim % 8 or call.head_dim > limit:
      return Choice("xla", f"cuDNN takes head dims that are multiples of 8 up to {limit}, "
                           f"not {call.head_dim}")
    if call.segments:
      return Choice("xla", "packed rows: cuDNN would take segments as a bias with its "
                           "gradient (and refuses odd T)")
    return Choice("cudnn", mask)
  return Choice("xla", mask)


def _mask_text(call: AttentionCall) -> str:
  parts = [p for p, on in (("causal", call.causal), ("padding", call.padding),
                           ("segments", call.segments)) if on]
  return ", ".join(parts) if parts else "no mask"


_LOG: contextvars.ContextVar[list | None] = contextvars.ContextVar("attention_log",
                                                                   default=None)


@contextlib.contextmanager
def recording():
  """Collects the Choice of every attention call traced within (a list, in call order)."""
  log: list[Choice] = []
  token = _LOG.set(log)
  try:
    yield log
  finally:
    _LOG.reset(token)


def record(choice: Choice) -> Choice:
  log = _LOG.get()
  if log is not None:
    log.append(choice)
  return choice


def summary(log: list[Choice]) -> str:
  """"cudnn (causal); xla-explicit (attention dropout...)": the distinct choices, in the order
  first traced (a scanned stack of layers is traced once, so counts would mislead)."""
  counts: dict[str, int] = {}
  for c in log:
    counts[str(c)] = counts.get(str(c), 0) + 1
  return "; ".join(counts) or "none"
