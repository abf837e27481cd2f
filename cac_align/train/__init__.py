"""Training infrastructure shared by the recipes: full-state checkpoints, rank-0 metric logging, process info."""
