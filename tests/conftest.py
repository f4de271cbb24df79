"""Every test sees 8 simulated CPU devices, so the sharded code paths run everywhere.

The tests compile the same tiny models many times, in this process and in the
programs they start (train.py, the cli): one persistent compilation cache for
the session, empty at its start, lets each compile once. Programs started by
a test, and pytest-xdist's workers, find it through the environment; the
process that made it removes it.

The cache keeps every compile, not only those over a second (JAX's
default): most of the tests' compiles are of tiny models, and a tiny
`train.py` started again took 7.2 s of CPU with every compile cached, 8 s
with the default. The user's own XLA_FLAGS are not passed on: each test that
needs a flag sets it.

pytest-xdist runs the suite as `--dist loadscope`: a test file's functions
go to one worker together, so its module fixtures are built once, and so do
a test class's methods; tests/test_docs.py makes a class of each page, so
the pages, the suite's longest tests, run side by side. The units are handed
out longest first (pytest.ini: --no-loadscope-reorder keeps this order
instead of xdist's, most tests first).
"""
import os
import shutil
import tempfile

import pytest

# The longest units, longest first; the others follow in file order.
_LONGEST_FIRST = ('tests/test_docs.py::TestPage_docs_training',
                  'tests/test_docs.py::TestPage_README',
                  'tests/test_docs.py::TestPage_docs_inference', 'tests/test_resume.py',
                  'tests/test_train.py', 'tests/test_multihost.py',
                  'tests/test_docs.py::TestPage_docs_pretrained_weights')

os.environ['XLA_FLAGS'] = ''
os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'

_OWNS_CACHE = 'CLAN_JAX_TEST_CACHE' not in os.environ
if _OWNS_CACHE:
  os.environ['CLAN_JAX_TEST_CACHE'] = tempfile.mkdtemp(prefix='clan_jax_test_compilation_cache_')
_CACHE_DIR = os.environ['JAX_COMPILATION_CACHE_DIR'] = os.environ['CLAN_JAX_TEST_CACHE']

import jax  # pylint: disable=g-import-not-at-top  # after the environment it reads on import

jax.config.update('jax_num_cpu_devices', 8)
jax.config.update('jax_platforms', 'cpu')
jax.config.update('jax_compilation_cache_dir', _CACHE_DIR)


def _unit(item: pytest.Item) -> str:
  """The unit that `--dist loadscope` sends to one worker: the test's class, or its file."""
  return item.nodeid.rsplit('::', 1)[0] if item.cls else item.nodeid.split('::')[0]


def pytest_collection_modifyitems(config, items):
  del config
  rank = {unit: i for i, unit in enumerate(_LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(_unit(item), len(rank)))  # stable: file order otherwise


def pytest_unconfigure(config):
  del config
  if _OWNS_CACHE:
    shutil.rmtree(_CACHE_DIR, ignore_errors=True)


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """One TFDS data dir for the session: each synthetic size is generated once."""
  return str(tmp_path_factory.mktemp('tensorflow_datasets'))
