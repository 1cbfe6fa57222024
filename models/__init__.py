"""PyTorch models, their configs and the training loop (see the training issue)."""
