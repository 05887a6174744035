"""The packaged presets: one config file per family (a size table) and the fine-tuning tasks.

`--config bert:base` names one from any directory; `--config configs/bert.py:base` (a path)
still works in a checkout, where configs/*.py re-export these. Any other path is a config file
of your own with the same `get_config(arg)` contract.
"""

import os

from absl import flags
from ml_collections import config_flags

from plm_jax.errors import ConfigError

DIRECTORY = os.path.dirname(os.path.abspath(__file__))
# every config file beside this one: bert, roberta, albert, gpt, xlnet (a size table each) and
# classify (the fine-tuning tasks)
PRESETS = tuple(sorted(name[:-3] for name in os.listdir(DIRECTORY)
                       if name.endswith(".py") and not name.startswith("_")))


def preset_path(name: str) -> str | None:
  """The packaged file of preset `name` ("bert", or "configs/bert.py" when that path is not
  there: the checkout's shims, seen from elsewhere), else None."""
  stem = os.path.basename(name)
  stem = stem[:-3] if stem.endswith(".py") else stem
  if stem not in PRESETS or (name.endswith(".py") and os.path.exists(name)):
    return None
  if os.sep in name and not name.endswith(".py"):
    return None
  return os.path.join(DIRECTORY, f"{stem}.py")


def resolve(value: str) -> str:
  """A --config value with a preset's name (or a checkout path seen from elsewhere) made the
  packaged file's path; anything else unchanged."""
  path, sep, arg = value.partition(":")
  packaged = preset_path(path)
  return value if packaged is None else packaged + sep + arg


def load(spec: str):
  """The config of `FILE:ARG` or a preset's `NAME:ARG`, read as `--config` reads it
  (ml_collections' config-file parser), unlocked: for commands that build configs of their own
  (compare's stages)."""
  resolved = resolve(spec)
  path = resolved.partition(":")[0]
  if not os.path.exists(path):
    raise ConfigError(f"config {spec!r}: no such preset or file")
  # a flag (and so a module) of its own per file: a config module is loaded under its flag's name
  name, values = f"preset_{abs(hash(path))}", flags.FlagValues()
  config_flags.DEFINE_config_file(name, resolved, flag_values=values, lock_config=False)
  values.mark_as_parsed()
  return values[name].value
