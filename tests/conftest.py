"""Test setup: 8 simulated CPU devices and a shared tokenizer (shared helpers: helpers.py)."""

import os
import sys
import tempfile

# Must happen before jax is imported anywhere: simulate an 8-device host on the CPU.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tokenizers trained on a corpus are cached (plm_jax.data.pipeline.cached_training): the tests
# use a cache of their own, shared with the processes they start.
os.environ["PLM_JAX_CACHE"] = tempfile.mkdtemp(prefix="plm-jax-test-cache-")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `configs`

import pytest  # noqa: E402

from helpers import family_config  # noqa: E402


@pytest.fixture(scope="session")
def tokenizers_dir(tmp_path_factory):
  """One WordPiece, one BPE and one Unigram tokenizer trained on the built-in corpus, shared by all tests
  (HF tokenizers' training is not bit-reproducible, so runs compared to each other share one)."""
  from plm_jax.data import pipeline, sources
  base = tmp_path_factory.mktemp("tokenizers")
  out = {}
  for family in ("bert", "gpt", "xlnet"):
    config = family_config(family)
    docs = sources.load_documents(sources.specs_from_config(config.data)[0], config.data)
    directory = base / family
    pipeline.tokenizer_for(config, docs).save(str(directory))
    out[family] = str(directory)
  return out
