"""Command-line programs, `python -m clan_jax.cli.<name>`: flags and printing only."""
