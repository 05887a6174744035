"""Fine-tuning for sequence classification: tasks, data, metrics and the run itself."""
