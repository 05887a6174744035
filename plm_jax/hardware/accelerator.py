"""Settings that depend on the device a run lands on: what "auto" means, and the compile cache.

`model.dtype`, `model.attention_impl` and `train.prng_impl` default to "auto", so one config is
fast on a GPU or TPU and exact on a laptop:

| setting            | CPU          | NVIDIA GPU | TPU    |
| ------------------ | ------------ | ---------- | ------ |
| compute dtype      | float32      | bfloat16   | bfloat16 |
| attention kernel   | xla          | cudnn      | splash |
| dropout PRNG       | threefry2x32 | rbg        | rbg    |

An explicit value in the config always wins; with float32 compute "auto" attention on a GPU is
xla (cuDNN's flash kernel takes 16-bit inputs only), and splash falls back to xla for a sequence
length that is not a multiple of 128 (its tile). rbg draws its bits with the device's own generator
(several times cheaper than threefry for dropout masks); its bits depend on the mesh, threefry's
do not.

Compiling ahead of time for other hardware (`plm-jax bench --compile-only --topology v5p-128`)
resolves "auto" for the target, not the host: inside `targeting("tpu")` every "auto" here, the
checks of plm_jax/checks.py and the kernels' own choices see the target's platform.
"""

import contextlib
import contextvars
import os

import jax

from plm_jax.errors import ConfigError

DTYPES = ("float32", "bfloat16", "float16")
ATTENTION = ("xla", "cudnn", "splash")
PRNGS = ("threefry2x32", "rbg", "unsafe_rbg")


_TARGET: contextvars.ContextVar[str | None] = contextvars.ContextVar("target", default=None)


@contextlib.contextmanager
def targeting(where: str):
  """Within: `platform()` is `where` (the devices a step is compiled for), not this host's."""
  token = _TARGET.set(where)
  try:
    yield
  finally:
    _TARGET.reset(token)


def platform() -> str:
  """"cpu", "gpu" (NVIDIA), "rocm" or "tpu": the kind of the devices this process drives (or,
  inside `targeting`, compiles for)."""
  if _TARGET.get() is not None:
    return _TARGET.get()
  device = jax.devices()[0]
  version = str(getattr(device.client, "platform_version", "")).lower()
  if device.platform == "gpu" and "rocm" in version:
    return "rocm"
  return device.platform


def _accelerated(where: str | None) -> bool:
  return (where or platform()) in ("gpu", "rocm", "tpu")


def _check(name: str, value: str, allowed: tuple) -> str:
  if value != "auto" and value not in allowed:
    raise ConfigError(f"{name}={value!r} is not one of {('auto', *allowed)}")
  return value


# Each takes the config's value and, optionally, the platform to resolve "auto" for (default:
# this process's devices; `plm-jax plan` passes the planned topology's).

def compute_dtype(value: str, where: str | None = None) -> str:
  if _check("model.dtype", value, DTYPES) != "auto":
    return value
  return "bfloat16" if _accelerated(where) else "float32"


def attention_impl(value: str | None, where: str | None = None, dtype: str = "bfloat16"
                   ) -> str:
  """`dtype`: the resolved compute dtype (cuDNN's flash kernel takes only 16-bit inputs)."""
  if value in (None, ""):
    value = "xla"
  if _check("model.attention_impl", value, ATTENTION) != "auto":
    return value
  kernel = {"gpu": "cudnn", "tpu": "splash"}.get(where or platform(), "xla")
  return "xla" if kernel == "cudnn" and dtype == "float32" else kernel


def prng_impl(value: str, where: str | None = None) -> str:
  if _check("train.prng_impl", value, PRNGS) != "auto":
    return value
  return "rbg" if _accelerated(where) else "threefry2x32"


def resolved(config) -> dict:
  """What a run of `config` uses on this machine (printed by train and bench)."""
  dtype = compute_dtype(config.model.dtype)
  return {"platform": platform(), "dtype": dtype, "param_dtype": config.model.param_dtype,
          "attention": attention_impl(config.model.attention_impl, dtype=dtype),
          "prng": prng_impl(config.train.prng_impl), "scan_layers": config.model.scan_layers,
          "remat": config.model.remat}


def describe(config) -> str:
  s = resolved(config)
  return (f"{s['platform']}: {s['dtype']} compute, {s['param_dtype']} parameters, "
          f"{s['attention']} attention, {s['prng']} dropout PRNG, "
          f"{'scanned' if s['scan_layers'] else 'unrolled'} layers"
          f"{', remat' if s['remat'] else ''}")


def compilation_cache_dir() -> str | None:
  """Where compiled steps are kept between runs: $PLM_JAX_COMPILATION_CACHE, else
  $PLM_JAX_CACHE/xla, else ~/.cache/plm-jax/xla; PLM_JAX_COMPILATION_CACHE=off turns it off."""
  explicit = os.environ.get("PLM_JAX_COMPILATION_CACHE", "")
  if explicit.lower() in ("off", "0", "none", "false"):
    return None
  if explicit:
    return explicit
  root = os.environ.get("PLM_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                         "plm-jax")
  return os.path.join(root, "xla")


def enable_compilation_cache() -> str | None:
  """Turns on JAX's persistent compilation cache (a second run of the same step loads it
  instead of compiling); returns the directory, or None when off or not writable."""
  path = compilation_cache_dir()
  if path is None:
    return None
  try:
    os.makedirs(path, exist_ok=True)
  except OSError:
    return None                       # a read-only home: run without the cache
  jax.config.update("jax_compilation_cache_dir", path)
  # Cache every step that took a second or more to compile (JAX's default), whatever its size.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  return path
