"""The packaged presets: one config file per family (a size table) and the fine-tuning tasks.

`--config bert:base` names one from any directory; `--config configs/bert.py:base` (a path)
still works in a checkout, where configs/*.py re-export these. Any other path is a config file
of your own with the same `get_config(arg)` contract.
"""

import os

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
