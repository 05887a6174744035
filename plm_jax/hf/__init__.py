"""Hugging Face interop: the tensor tables and config mappings of each family (tables.py),
converting parameters and configs both ways (convert.py), and the `import-hf` / `export-hf`
commands (workdir.py)."""
