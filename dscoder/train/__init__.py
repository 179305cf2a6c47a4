"""Training: packed FIM data, one loop for pretraining, long-context extension and instruction tuning."""
