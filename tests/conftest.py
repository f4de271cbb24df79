"""Every test sees 8 simulated CPU devices, so the sharded code paths run everywhere.

The tests compile the same tiny models many times, in this process and in the
programs they start (train.py, the cli): one persistent compilation cache for
the session, empty at its start, lets each compile once. Programs started by
a test, and pytest-xdist's workers, find it through the environment; the
process that made it removes it.
"""
import os
import shutil
import tempfile

import jax
import pytest

_OWNS_CACHE = 'CLAN_JAX_TEST_CACHE' not in os.environ
if _OWNS_CACHE:
  os.environ['CLAN_JAX_TEST_CACHE'] = tempfile.mkdtemp(prefix='clan_jax_test_compilation_cache_')
_CACHE_DIR = os.environ['JAX_COMPILATION_CACHE_DIR'] = os.environ['CLAN_JAX_TEST_CACHE']

jax.config.update('jax_num_cpu_devices', 8)
jax.config.update('jax_platforms', 'cpu')
jax.config.update('jax_compilation_cache_dir', _CACHE_DIR)


def pytest_unconfigure(config):
  del config
  if _OWNS_CACHE:
    shutil.rmtree(_CACHE_DIR, ignore_errors=True)


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """One TFDS data dir for the session: each synthetic size is generated once."""
  return str(tmp_path_factory.mktemp('tensorflow_datasets'))
