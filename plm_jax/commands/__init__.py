"""The library functions of the commands that are not a folder of their own: `train`
(pretrain.py), `evaluate` (evaluate.py), `tokenizer` and `data` (data.py)."""
