"""Generation fine-tuning of a GPT on prompt -> completion pairs (translation, summaries)."""
