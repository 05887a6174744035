"""plm-jax: pretrain BERT, RoBERTa, ALBERT, XLNet and GPT language models in JAX, from one CPU
to a pod, and fine-tune them (classification, tagging, question answering, generation)."""

__version__ = "0.1.0"
