"""Speed and memory benchmarks of clan_jax, run as modules from the repository root.

  python -m benchmarks.scaling --size=448 --batch=32
"""
