"""A program checks its config once, before it reads any data (config_validation.ValidConfig)."""
import os
import subprocess
import sys

import pytest

from clan_jax.training import config_validation, trainer
from clan_jax.user_errors import UserError
from configs import test as test_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# train.py as `python train.py` runs it, with each validation and each dataset
# read recorded in order, printed when the program exits.
COUNTING_TRAIN = '''
import atexit, runpy, sys
from clan_jax.data import input_pipeline
from clan_jax.training import config_validation
events = []

def recorded(event, function):
  def call(*args, **kwargs):
    events.append(event)
    return function(*args, **kwargs)
  return call

config_validation.validate = recorded('validate', config_validation.validate)
input_pipeline.get_dataset_builder = recorded('data', input_pipeline.get_dataset_builder)
atexit.register(lambda: print('events:', ','.join(events)))
sys.argv[0] = 'train.py'
runpy.run_path('train.py', run_name='__main__')
'''


@pytest.mark.slow
def test_train_py_validates_once_before_reading_data(data_dir, tmp_path):
  run = subprocess.run(
      [sys.executable, '-c', COUNTING_TRAIN, '--config=configs/test.py',
       f'--config.data.data_dir={data_dir}', f'--workdir={tmp_path}'],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env={**os.environ, 'PYTHONPATH': REPO})
  assert run.returncode == 0, run.stderr[-3000:]
  events = run.stdout.strip().splitlines()[-1].removeprefix('events: ').split(',')
  assert events.count('validate') == 1 and events[0] == 'validate', events


def test_a_valid_config_stays_valid_and_its_copies_are_checked_again(tmp_path):
  config = test_config.get_config()
  valid = config_validation.validate(config)
  assert config_validation.validated(valid) is valid
  with pytest.raises(AttributeError, match='immutable'):
    valid.optim.learning_rate = -1.0
  config.optim.learning_rate = -1.0  # the validated config's owner changes it
  copy = valid.copy_and_resolve_references()
  assert valid.optim.learning_rate == copy.optim.learning_rate == 0.05
  copy.optim.learning_rate = -1.0  # a copy is the caller's to change, and checked again
  with pytest.raises(UserError, match=r'^config.optim.learning_rate=-1.0 must be'):
    trainer.train_and_evaluate(copy, str(tmp_path))
