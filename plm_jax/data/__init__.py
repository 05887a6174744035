"""Data: text sources, tokenizers, example builders and the deterministic batch loader."""
