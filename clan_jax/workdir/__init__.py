"""A training workdir: its checkpoints, its lock, and its config and classes as a model."""
