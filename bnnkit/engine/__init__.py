"""Training, checkpoints, devices, run directories and evaluation loops."""
