"""Every row of docs/errors.md: a bad input and the one line the program prints for it.

Each row runs in this process through what the program's `main` calls (for
train.py: its flag parsing and `trainer.train_and_evaluate`), which raises the
error before any data is read or anything is compiled. A few rows also run as
the real programs, to check the one line on stderr and the exit status 2.
"""
import json
import os
import re
import shlex
import socket
import subprocess
import sys

from absl import flags
import numpy as np
import pytest

# As `cli`: `program` names a row's program below.
from clan_jax.cli import program as cli
from clan_jax.inference import evaluate
from clan_jax.models import torchvision_weights
from clan_jax.workdir import lock, trained_model
from clan_jax.data import input_pipeline, prepare
from clan_jax.training import trainer
from clan_jax.user_errors import UserError
from configs import test as test_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE = os.path.join(REPO, 'docs', 'errors.md')
SINCE = '2026-01-01T00:00:00+00:00'


def _rows() -> list[tuple[str, str, str, str]]:
  """(number, program, arguments, message) of each row of the table."""
  with open(TABLE) as f:
    return [tuple(re.fullmatch(r'\| (\d+) \| ([\w.]+) \| `(.*)` \| `(.*)` \|', line.strip())
                  .groups())
            for line in f if re.match(r'\| \d+ \|', line)]


ROWS = _rows()


def _write_lock(workdir, host, pid, started) -> None:
  os.makedirs(workdir)
  with open(os.path.join(workdir, lock.LOCK_FILE), 'w') as f:
    json.dump({'host': host, 'pid': pid, 'started': started, 'since': SINCE}, f)


@pytest.fixture(scope='module')
def files(tmp_path_factory) -> str:
  """The scratch directory `{tmp}` of the table, with the files its rows name."""
  tmp = str(tmp_path_factory.mktemp('bad_inputs'))
  rng = np.random.default_rng(0)
  for name in ('random.npz', 'random.safetensors', 'random.pth', 'random.jpg'):
    with open(os.path.join(tmp, name), 'wb') as f:
      f.write(rng.integers(0, 256, 256, dtype=np.uint8).tobytes())
  with open(os.path.join(tmp, 'weights.txt'), 'w') as f:
    f.write('not weights\n')
  pid = os.getpid()  # this test's process: a live run
  _write_lock(os.path.join(tmp, 'held'), socket.gethostname(), pid,
              lock._start_time(pid))  # pylint: disable=protected-access
  other_model = os.path.join(tmp, 'other_model')
  trained_model.save_run_info(other_model, test_config.get_config(),
                              [f'species_{i:02d}' for i in range(4)])
  os.makedirs(os.path.join(other_model, trained_model.CHECKPOINT_DIR))
  return tmp


def _run_train(arguments: list[str], tmp: str, data_dir: str) -> str:
  """train.py's flag parsing and main, in this process; returns the error message."""
  argv = ['train.py', '--config=configs/test.py', f'--config.data.data_dir={data_dir}',
          f'--workdir={tmp}/workdir', *arguments]
  # train.py's flags; config_flags reads argv to know which overrides to define.
  flag_values = flags.FlagValues()
  cli.define_config_file('config', 'configs/default.py', '', flag_values=flag_values,
                         lock_config=True, sys_argv=argv)
  flags.DEFINE_string('workdir', None, '', flag_values=flag_values)
  with pytest.raises(UserError) as error:
    cli.parse_flags(argv, flag_values)
    config = cli.config_flag('config', flag_values)
    trainer.train_and_evaluate(config, flag_values.workdir)
  return str(error.value)


def _run_library(program: str, arguments: list[str]) -> str:
  """What the other programs' mains call with these flags; returns the error message."""
  named = dict(a[2:].split('=', 1) for a in arguments if a.startswith('--'))
  positional = [a for a in arguments if not a.startswith('--')]
  step = int(named['step']) if 'step' in named else None
  calls = {
      'evaluate': lambda: evaluate.evaluate(named['checkpoint'], step=step),
      'export': lambda: trained_model.load(named['checkpoint'], step=step),
      'predict': lambda: [input_pipeline.read_image(path) for path in positional],
      'convert_weights': lambda: torchvision_weights.load_weights(named['src'], named.get('variant')),
      'prepare': lambda: prepare.prepare(named['dataset'], named['manual_dir'],
                                         named.get('data_dir')),
  }
  with pytest.raises(UserError) as error:
    calls[program]()
  return str(error.value)


def _fill(text: str, tmp: str, data_dir: str) -> str:
  return text.replace('{tmp}', tmp).replace('{data_dir}', data_dir).replace(
      '{pid}', str(os.getpid()))


def test_the_table_has_at_least_30_numbered_rows():
  assert len(ROWS) >= 30
  assert [int(number) for number, *_ in ROWS] == list(range(1, len(ROWS) + 1))


@pytest.mark.parametrize('number, program, arguments, message', ROWS,
                         ids=[f'{n}-{p}' for n, p, _, _ in ROWS])
def test_row(number, program, arguments, message, files, data_dir, monkeypatch):
  del number
  monkeypatch.chdir(REPO)  # the table's relative paths
  arguments = [_fill(a, files, data_dir) for a in shlex.split(arguments)]
  if program == 'train.py':
    actual = _run_train(arguments, files, data_dir)
  else:
    actual = _run_library(program, arguments)
  assert f'error: {actual}' == _fill(message, files, data_dir)
  assert '\n' not in actual


SUBPROCESS_ROWS = {
    '24': [sys.executable, 'train.py'],
    '33': [sys.executable, '-m', 'clan_jax.cli.evaluate'],
    '38': [sys.executable, '-m', 'clan_jax.cli.convert_weights'],
    '43': [sys.executable, '-m', 'clan_jax.cli.prepare_data'],
}


@pytest.mark.parametrize('number', sorted(SUBPROCESS_ROWS))
def test_programs_print_one_line_and_exit_2(number, files, data_dir):
  _, _, arguments, message = next(row for row in ROWS if row[0] == number)
  arguments = [_fill(a, files, data_dir) for a in shlex.split(arguments)]
  run = subprocess.run(SUBPROCESS_ROWS[number] + arguments, cwd=REPO, capture_output=True,
                       text=True, timeout=300)
  assert run.returncode == 2, run.stderr[-2000:]
  assert 'Traceback' not in run.stderr
  assert run.stderr.strip().splitlines()[-1] == _fill(message, files, data_dir)


def test_an_internal_error_keeps_its_traceback(tmp_path):
  # A bug, not a user's mistake: absl's usual report, with the traceback.
  script = tmp_path / 'bug.py'
  script.write_text('from clan_jax.cli import program\n'
                    'def main(argv):\n  raise KeyError("a bug")\n'
                    'program.run(main)\n')
  run = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True,
                       text=True, timeout=300, env={**os.environ, 'PYTHONPATH': REPO})
  assert run.returncode == 1
  assert 'Traceback' in run.stderr and "KeyError: 'a bug'" in run.stderr
