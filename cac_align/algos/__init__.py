"""Training algorithms as pure functions over tensors (advantages, losses, selection); recipes call them in order."""
