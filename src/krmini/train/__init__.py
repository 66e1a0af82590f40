"""Pretraining: config, optimizer and schedule, data windows, checkpoints, the training loop."""
