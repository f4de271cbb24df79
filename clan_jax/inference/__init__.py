"""Using a trained workdir: evaluation, prediction, attention maps and export."""
