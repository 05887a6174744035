"""Fine-tuning a pretrained body: the run every kind shares (run.py), predictions over whole
splits (predict.py), and one sub-package per kind (classify/, tag/, qa/, seq2seq/), each with its
task table, data, metrics and run."""
