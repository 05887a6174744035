"""Token tagging (NER, POS, chunking): a tag per word, CoNLL files or TFDS."""
