"""clan_jax: CLAN (Cross-layer Attention Network) for fine-grained recognition in JAX."""
