"""Training: the trainer, its step functions, optimizer, checkpoints, devices and run files."""
