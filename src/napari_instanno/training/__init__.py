"""Training data, losses, training loops and evaluation."""
