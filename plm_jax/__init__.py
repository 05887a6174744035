"""plm-jax: pretrain BERT- and GPT-style language models in JAX, from one CPU to a pod."""

__version__ = "0.1.0"
