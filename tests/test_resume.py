"""Interrupted, resumed, guarded and locked training runs of train.py, in subprocesses.

Every run trains configs/test.py for 8 steps on one device, checkpointing every
2 steps. Interruptions come from tests/faults.py at a known step; each
interrupted workdir is then resumed with the plain command, and its final
variables must equal, bit for bit, those of one uninterrupted run.

The runs share a persistent compilation cache, so that only the first one
compiles.
"""
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from clan_jax import models, sharding
from clan_jax.workdir import checkpointing, lock, trained_model
from clan_jax.training import optimizer
from clan_jax.training.train_state import abstract_train_state
from clan_jax.user_errors import UserError

# Every test here starts programs or trains for a while.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 8


@pytest.fixture(scope='module')
def env():
  # The session's compilation cache (tests/conftest.py): tests/test_cloud_storage.py
  # trains the same config.
  return dict(os.environ)


def _train(env, data_dir, workdir, *flags, fault=None):
  """train.py (through tests/faults.py with `fault`, e.g. 'sigterm:5') -> CompletedProcess."""
  program = 'tests/faults.py' if fault else 'train.py'
  command = [sys.executable, program, '--config=configs/test.py', f'--workdir={workdir}',
             f'--config.data.data_dir={data_dir}', f'--config.num_train_steps={STEPS}',
             '--config.mesh.data=1', '--config.checkpoint.every_steps=2', *flags]
  run_env = dict(env, CLAN_JAX_FAULT=fault) if fault else env
  return subprocess.run(command, cwd=REPO, env=run_env, capture_output=True, text=True,
                        timeout=600)


def _steps(workdir) -> list[int]:
  return sorted(int(name) for name in os.listdir(os.path.join(workdir, 'checkpoints'))
                if name.isdigit())


def _variables(workdir, step=None) -> list[np.ndarray]:
  trained = trained_model.load(str(workdir), step=step)
  return jax.tree.leaves(jax.device_get(trained.variables))


def _assert_identical(workdir, expected, step=None):
  actual = _variables(workdir, step)
  assert len(actual) == len(expected)
  for a, b in zip(actual, expected):
    np.testing.assert_array_equal(a, b)


@pytest.fixture(scope='module')
def reference(env, data_dir, tmp_path_factory):
  """An uninterrupted run keeping all its checkpoints: (workdir, final variables)."""
  workdir = tmp_path_factory.mktemp('reference')
  run = _train(env, data_dir, workdir, '--config.checkpoint.keep=10')
  assert run.returncode == 0, run.stderr[-3000:]
  assert _steps(workdir) == [2, 4, 6, 8]
  assert not os.path.exists(workdir / lock.LOCK_FILE)
  return workdir, _variables(workdir)


def test_killed_and_stopped_runs_resume_bit_identically(env, data_dir, reference, tmp_path):
  _, expected = reference
  keep_one = '--config.checkpoint.keep=1'

  # SIGKILL while orbax writes step 4: step 2 stays, though only one is kept.
  run = _train(env, data_dir, tmp_path, keep_one, fault='sigkill_save:4')
  assert run.returncode == -signal.SIGKILL
  assert _steps(tmp_path) == [2]
  assert glob.glob(str(tmp_path / 'checkpoints' / '4.orbax-checkpoint-tmp*'))

  # SIGTERM at step 5: saved at 5, exit 0. The dead run's lock is taken over.
  run = _train(env, data_dir, tmp_path, keep_one, fault='sigterm:5')
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'Taking over' in run.stderr and 'is gone' in run.stderr
  assert 'Stopped by SIGTERM at step 5' in run.stdout.splitlines()[-1]
  assert _steps(tmp_path) == [5]
  assert not glob.glob(str(tmp_path / 'checkpoints' / '*tmp*'))

  # Ctrl-C at step 6: the same, and the line says how to exit at once.
  run = _train(env, data_dir, tmp_path, keep_one, fault='sigint:6')
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'Press Ctrl-C again to exit at once' in run.stderr
  assert 'Stopped by SIGINT at step 6' in run.stdout
  assert _steps(tmp_path) == [6]

  # SIGKILL at step 7, after the checkpoint of step 6.
  run = _train(env, data_dir, tmp_path, keep_one, fault='sigkill:7')
  assert run.returncode == -signal.SIGKILL
  assert _steps(tmp_path) == [6]

  run = _train(env, data_dir, tmp_path, keep_one)
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'Test accuracy' in run.stdout
  assert _steps(tmp_path) == [STEPS]
  _assert_identical(tmp_path, expected)


def test_second_ctrl_c_exits_at_once(env, data_dir, tmp_path):
  run = _train(env, data_dir, tmp_path, fault='sigint_twice:3')
  assert run.returncode == 130
  assert 'Second Ctrl-C: exiting at once, without saving.' in run.stderr
  assert 'Stopped' not in run.stdout
  # Step 3 was not saved; step 2's asynchronous save may have been cut short too.
  assert 3 not in _steps(tmp_path)


def test_nan_stops_the_run_and_the_last_good_checkpoint_resumes(
    env, data_dir, reference, tmp_path):
  reference_dir, expected = reference
  run = _train(env, data_dir, tmp_path, fault='nan:5')
  assert run.returncode == 2
  error = run.stderr.strip().splitlines()[-1]
  assert error.startswith('error: step 5: the loss (nan) or the gradient norm is not '
                          'finite: training stopped'), error
  assert 'the last checkpoint, step 4, is intact' in error
  assert _steps(tmp_path) == [2, 4]
  _assert_identical(tmp_path, _variables(reference_dir, 4), step=4)

  run = _train(env, data_dir, tmp_path)
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'Resumed from' in run.stderr and 'at step 4' in run.stderr
  _assert_identical(tmp_path, expected)


def _abstract_state(workdir):
  """The abstract train state of `workdir`'s saved config, on one device."""
  config = trained_model.load_config(str(workdir))
  mesh = sharding.create_mesh(config.mesh, devices=jax.devices()[:1])
  tx, _ = optimizer.create_optimizer(config, 1, 1)
  return abstract_train_state(models.create_model(config.model, 4), tx,
                              config.data.image_size, mesh)


def _train_states(workdir, steps) -> list:
  """The full train states (params, batch stats, optimizer state, step) saved at `steps`."""
  target = _abstract_state(workdir)
  checkpointer = checkpointing.Checkpointer(str(workdir / 'checkpoints'),
                                            save_every_steps=1, max_to_keep=None)
  states = [jax.device_get(checkpointer.restore(target, step)) for step in steps]
  checkpointer.close()
  return states


def test_nan_skips_the_update_when_configured(env, data_dir, reference, tmp_path):
  reference_dir, expected = reference
  run = _train(env, data_dir, tmp_path, '--config.on_nonfinite=skip',
               '--config.checkpoint.every_steps=1', '--config.checkpoint.keep=10',
               fault='nan:5')
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'step 5: the loss (nan) or the gradient norm is not finite: its update was ' \
         'skipped' in run.stderr
  # The skipped step (the 5th, saved as step 5) leaves every array of the state as
  # step 4 left it, optimizer state included; only the step counter moves on.
  before, after = _train_states(tmp_path, (4, 5))
  assert (int(before.step), int(after.step)) == (4, 5)
  before, after = (jax.tree.leaves((s.params, s.batch_stats, s.opt_state))
                   for s in (before, after))
  for a, b in zip(before, after, strict=True):
    np.testing.assert_array_equal(a, b)
  _assert_identical(tmp_path, _variables(reference_dir, 4), step=4)
  actual = _variables(tmp_path)
  assert all(np.all(np.isfinite(a)) for a in actual)
  assert any(not np.array_equal(a, b) for a, b in zip(actual, expected))


def _truncate_data_files(step_dir) -> None:
  paths = glob.glob(os.path.join(step_dir, '**', 'd', '*'), recursive=True)
  assert paths, f'no data files to damage under {step_dir}: {sorted(os.listdir(step_dir))}'
  for path in paths:
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 2)


def test_truncated_latest_checkpoint_is_reported_and_the_previous_resumed(
    env, data_dir, reference, tmp_path):
  reference_dir, expected = reference
  workdir = tmp_path / 'workdir'
  shutil.copytree(reference_dir, workdir)
  _truncate_data_files(workdir / 'checkpoints' / '8')
  run = _train(env, data_dir, workdir, '--config.checkpoint.keep=10')
  assert run.returncode == 0, run.stderr[-3000:]
  warnings = [line for line in run.stderr.splitlines() if line.startswith('warning:')]
  assert warnings, run.stderr[-5000:]
  assert f'checkpoint {workdir}/checkpoints/8 cannot be read (' in warnings[0]
  assert 'Resuming from step 6, the newest checkpoint that can be read.' in run.stderr
  assert os.path.isdir(workdir / 'checkpoints' / 'unreadable_8')
  assert _steps(workdir) == [2, 4, 6, 8]
  _assert_identical(workdir, expected)


def test_fallback_can_be_forbidden(reference, tmp_path):
  reference_dir, _ = reference
  shutil.copytree(reference_dir / 'checkpoints', tmp_path / 'checkpoints')
  _truncate_data_files(tmp_path / 'checkpoints' / '8')
  target = _abstract_state(reference_dir)
  checkpointer = checkpointing.Checkpointer(str(tmp_path / 'checkpoints'),
                                            save_every_steps=1, max_to_keep=None)
  with pytest.raises(UserError, match=r'checkpoint .*/checkpoints/8 cannot be read .*'
                     r'config.checkpoint.fallback=False forbids'):
    checkpointer.restore_newest_readable(target, fallback=False)
  assert _steps(tmp_path) == [2, 4, 6, 8]  # nothing moved
  checkpointer.close()


def test_a_held_workdir_is_refused_before_any_work(env, data_dir, tmp_path):
  pid = os.getpid()  # this test's process: alive
  with open(tmp_path / lock.LOCK_FILE, 'w') as f:
    json.dump({'host': socket.gethostname(), 'pid': pid,
               'started': lock._start_time(pid), 'since': 'now'}, f)
  run = _train(env, data_dir, tmp_path)
  assert run.returncode == 2
  assert run.stderr.strip().splitlines()[-1] == (
      f'error: {tmp_path} is in use by another training run (pid {pid} on this host, '
      f'since now; {tmp_path}/lock.json). Use another --workdir, or wait for that run '
      f'to end; if it is no longer running, delete {tmp_path}/lock.json.')
  assert sorted(os.listdir(tmp_path)) == ['lock.json']
