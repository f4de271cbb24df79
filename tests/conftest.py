"""Every test sees 8 simulated CPU devices, so the sharded code paths run everywhere."""
import jax
import pytest

jax.config.update('jax_num_cpu_devices', 8)
jax.config.update('jax_platforms', 'cpu')


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """One TFDS data dir for the session: each synthetic size is generated once."""
  return str(tmp_path_factory.mktemp('tensorflow_datasets'))
