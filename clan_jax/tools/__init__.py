"""Command-line tools: `python -m clan_jax.tools.<name>`."""
