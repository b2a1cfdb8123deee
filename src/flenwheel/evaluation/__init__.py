"""Checkpoint evaluation: the model-card prompt grid, per-image scores, selection, and troubleshooting advice."""
