"""train.py and the other programs with their paths on a GCS bucket, served by an emulator.

The emulator (tests/gcs_emulator.py) is fake-gcs-server on 127.0.0.1 behind
a TLS proxy, reached by the programs' own I/O stacks unchanged: TensorFlow's
GCS client (TFDS, TensorBoard, epath) and TensorStore's (orbax's arrays, the
workdir's lock). What the emulator does not check as GCS does: the
generation preconditions of the lock's conditional writes (fake-gcs-server
ignores `ifGenerationMatch`; probed), so the race of two jobs creating the
lock at the same moment is tested on a local disk only (tests/test_lock.py).
"""
import json
import os
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest

from tests import gcs_emulator

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = 'clan'
WORKDIR = f'gs://{BUCKET}/run'
DATA_DIR = f'gs://{BUCKET}/tensorflow_datasets'
STEPS = 8


@pytest.fixture(scope='module')
def emulator(tmp_path_factory):
  server = gcs_emulator.Emulator(tmp_path_factory.mktemp('gcs'))
  server.create_bucket(BUCKET)
  server.create_bucket('read-only', read_only=True)
  yield server
  server.close()


@pytest.fixture(scope='module')
def env(emulator):
  # The session's compilation cache (tests/conftest.py): tests/test_resume.py
  # trains the same config.
  return {**os.environ, **emulator.env}


def _run(env, *arguments, fault=None) -> subprocess.CompletedProcess:
  """A program of this repository (arguments[0]) -> CompletedProcess."""
  run_env = dict(env, CLAN_JAX_FAULT=fault) if fault else env
  return subprocess.run([sys.executable, *arguments], cwd=REPO, env=run_env,
                        capture_output=True, text=True, timeout=600)


def _train(env, workdir, data_dir, *flags, fault=None) -> subprocess.CompletedProcess:
  return _run(env, 'tests/faults.py' if fault else 'train.py', '--config=configs/test.py',
              f'--workdir={workdir}', f'--config.data.data_dir={data_dir}',
              f'--config.num_train_steps={STEPS}', '--config.mesh.data=1',
              '--config.checkpoint.every_steps=2', '--config.checkpoint.keep=10', *flags,
              fault=fault)


def _steps(emulator, prefix: str) -> list[int]:
  names = {name[len(prefix):].split('/')[0] for name in emulator.objects(BUCKET, prefix)}
  return sorted(int(n) for n in names if n.isdigit())


def _variables(workdir: str, monkeypatch, emulator) -> list[np.ndarray]:
  """The final variables of `workdir`, read in this process (through the emulator for gs://)."""
  from clan_jax.workdir import trained_model  # pylint: disable=g-import-not-at-top
  with monkeypatch.context() as patch:
    for name, value in emulator.env.items():
      patch.setenv(name, value)
    return jax.tree.leaves(jax.device_get(trained_model.load(workdir).variables))


@pytest.fixture(scope='module')
def interrupted(env, emulator, data_dir, tmp_path_factory):
  """A local uninterrupted run, and one on the bucket killed, stopped and damaged on the way."""
  local = str(tmp_path_factory.mktemp('local'))
  runs = {'local': _train(env, local, data_dir)}
  # SIGKILL while orbax writes step 4 (the data generated on the bucket first):
  # step 2 stays, step 4 is not complete.
  runs['sigkill'] = _train(env, WORKDIR, DATA_DIR, fault='sigkill_save:4')
  steps_after_kill = _steps(emulator, 'run/checkpoints/')
  # SIGTERM at step 5: resumes from 2, saves 5 and exits 0.
  runs['sigterm'] = _train(env, WORKDIR, DATA_DIR, fault='sigterm:5')
  steps_after_term = _steps(emulator, 'run/checkpoints/')
  # Damage step 5: one object of its arrays lost. Resumes from 4 and ends at 8.
  arrays = [n for n in emulator.objects(BUCKET, 'run/checkpoints/5/') if '/d/' in n]
  emulator.delete(BUCKET, arrays[0])
  runs['damaged'] = _train(env, WORKDIR, DATA_DIR)
  return local, runs, steps_after_kill, steps_after_term


def test_a_run_on_the_bucket_resumes_from_it_and_ends_bit_identical_to_a_local_run(
    interrupted, emulator, monkeypatch):
  local, runs, steps_after_kill, steps_after_term = interrupted
  assert runs['local'].returncode == 0, runs['local'].stderr[-3000:]
  assert runs['sigkill'].returncode == -signal.SIGKILL, runs['sigkill'].stderr[-3000:]
  assert steps_after_kill == [2]

  assert runs['sigterm'].returncode == 0, runs['sigterm'].stderr[-3000:]
  assert f'Taking over {WORKDIR}/lock.json' in runs['sigterm'].stderr
  assert 'Stopped by SIGTERM at step 5' in runs['sigterm'].stdout.splitlines()[-1]
  assert steps_after_term == [2, 4, 5]

  damaged = runs['damaged']
  assert damaged.returncode == 0, damaged.stderr[-3000:]
  assert f'checkpoint {WORKDIR}/checkpoints/5 cannot be read' in damaged.stderr
  assert 'Resuming from step 4, the newest checkpoint that can be read.' in damaged.stderr
  assert _steps(emulator, 'run/checkpoints/') == [2, 4, 6, 8]
  assert emulator.objects(BUCKET, 'run/checkpoints/unreadable_5/')

  expected = _variables(local, monkeypatch, emulator)
  actual = _variables(WORKDIR, monkeypatch, emulator)
  assert len(actual) == len(expected)
  for a, b in zip(actual, expected):
    np.testing.assert_array_equal(a, b)

  names = emulator.objects(BUCKET, 'run/')
  assert 'run/lock.json' not in names  # released
  assert {'run/config.json', 'run/classes.json'} <= set(names)
  assert any(n.startswith('run/events.out.tfevents.') for n in names)  # TensorBoard's
  assert any(n.startswith('tensorflow_datasets/') for n in emulator.objects(BUCKET))
  assert not os.path.exists(os.path.join(REPO, 'gs:'))


def test_evaluate_predict_and_export_read_the_bucket_and_write_to_it(
    interrupted, env, emulator, tmp_path):
  del interrupted  # trained WORKDIR
  evaluated = _run(env, '-m', 'clan_jax.cli.evaluate', f'--checkpoint={WORKDIR}')
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  results = [n for n in emulator.objects(BUCKET, 'run/eval/') if n.endswith('results.json')]
  assert results == [f'run/eval/test_step{STEPS}/results.json']

  image = tmp_path / 'bird.png'
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 40, 3), np.uint8)).save(image)
  predicted = _run(env, '-m', 'clan_jax.cli.predict', f'--checkpoint={WORKDIR}',
                   f'--attention_dir=gs://{BUCKET}/maps', str(image))
  assert predicted.returncode == 0, predicted.stderr[-3000:]
  assert 'bird.png' in predicted.stdout
  maps = [n for n in emulator.objects(BUCKET, 'maps/') if not n.endswith('/')]
  assert maps and all(n.startswith('maps/bird.png_') and n.endswith('.png') for n in maps)

  exported = _run(env, '-m', 'clan_jax.cli.export', f'--checkpoint={WORKDIR}',
                  f'--out=gs://{BUCKET}/export/clan.jax_exported')
  assert exported.returncode == 0, exported.stderr[-3000:]
  assert [n for n in emulator.objects(BUCKET, 'export/') if not n.endswith('/')] == [
      'export/clan.jax_exported', 'export/clan.jax_exported.json']
  assert not os.path.exists(os.path.join(REPO, 'gs:'))


def test_a_workdir_held_by_a_live_job_is_refused_on_the_bucket(env, emulator, data_dir):
  pid = os.getpid()  # this test's process: alive
  from clan_jax.workdir import lock  # pylint: disable=g-import-not-at-top
  emulator.upload(BUCKET, 'held/lock.json', json.dumps(
      {'host': socket.gethostname(), 'pid': pid, 'started': lock._start_time(pid),  # pylint: disable=protected-access
       'since': 'now'}).encode())
  run = _train(env, f'gs://{BUCKET}/held', data_dir)
  assert run.returncode == 2
  assert run.stderr.strip().splitlines()[-1] == (
      f'error: gs://{BUCKET}/held is in use by another training run (pid {pid} on this host, '
      f'since now; gs://{BUCKET}/held/lock.json). Use another --workdir, or wait for that run '
      f'to end; if it is no longer running, delete gs://{BUCKET}/held/lock.json.')
  assert emulator.objects(BUCKET, 'held/') == ['held/lock.json']


@pytest.mark.parametrize('flags, message', [
    (['--workdir=gs://no-such-bucket/run'],
     'error: --workdir=gs://no-such-bucket/run: the bucket no-such-bucket does not exist '
     '(or these credentials cannot see it).'),
    ([f'--workdir=gs://{BUCKET}/ok', '--config.data.data_dir=gs://no-such-bucket/tfds'],
     'error: config.data.data_dir=gs://no-such-bucket/tfds: the bucket no-such-bucket does '
     'not exist (or these credentials cannot see it).'),
    (['--workdir=gs://read-only/run'],
     'error: --workdir=gs://read-only/run: cannot write lock.json there ('),
], ids=['no_bucket', 'no_data_bucket', 'read_only'])
def test_bad_bucket_urls_fail_in_one_line_before_any_work(env, emulator, data_dir, flags,
                                                          message):
  run = _run(env, 'train.py', '--config=configs/test.py', f'--config.data.data_dir={data_dir}',
             *flags)
  assert run.returncode == 2, run.stderr[-3000:]
  assert run.stderr.strip().splitlines()[-1].startswith(message)
  assert 'Traceback' not in run.stderr
  assert not emulator.objects(BUCKET, 'ok/')  # nothing written, nothing compiled


def test_the_source_backbone_is_pretrained_into_a_data_dir_on_the_bucket(env, emulator):
  workdir = f'gs://{BUCKET}/fine_tuned'
  run = _train(env, workdir, DATA_DIR, '--config.init.source_pretraining.enabled=True',
               '--config.init.source_pretraining.train_per_class=2',
               '--config.init.source_pretraining.num_train_steps=2',
               '--config.num_train_steps=1')
  assert run.returncode == 0, run.stderr[-3000:]
  weights = [n for n in emulator.objects(BUCKET, 'tensorflow_datasets/')
             if n.endswith('/backbone.npz')]
  assert len(weights) == 1
  emulator_config = json.loads(emulator.download(BUCKET, 'fine_tuned/config.json'))
  assert emulator_config['init']['backbone_weights'] == f'gs://{BUCKET}/{weights[0]}'
