"""Sequence classification (and regression): GLUE, IMDB, files, the built-in word-order task."""
