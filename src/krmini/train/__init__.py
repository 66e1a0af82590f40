"""Training: config, optimizer and schedule, data windows, checkpoints, LoRA adapters, the training loop."""
