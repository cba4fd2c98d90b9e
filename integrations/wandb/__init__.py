"""Weights & Biases: the sweep callback for runs launched by ``wandb agent``."""
