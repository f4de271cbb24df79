"""A two-process job (gloo collectives, 4 CPU devices each) trains as one 8-device process.

Both runs go through train.py's own entry point. The parity needs the input
pipeline's contract: the global batch of step k depends on (seed, k) only,
and process i of P feeds rows [i*B/P, (i+1)*B/P) of it.
"""
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from clan_jax.workdir import trained_model
from tests import tensorboard_scalars

# Every test here starts programs or trains for a while.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _command(workdir, data_dir, num_devices):
  return [sys.executable, 'train.py', '--config=configs/test.py', f'--workdir={workdir}',
          f'--config.data.data_dir={data_dir}', f'--config.num_train_steps={STEPS}',
          '--config.log_every_steps=1', '--config.checkpoint.every_steps=3',
          '--jax_platforms=cpu', f'--jax_num_cpu_devices={num_devices}']


def _train_losses(workdir) -> dict[int, float]:
  """{step: train/loss} from the TensorBoard scalars (process 0's) in `workdir`."""
  return tensorboard_scalars.read(workdir).get('train/loss', {})


def test_two_processes_train_like_one_and_their_checkpoint_restores(data_dir, tmp_path):
  # One process with 8 devices first; it also generates the synthetic data.
  single = subprocess.run(_command(tmp_path / 'one', data_dir, 8), cwd=REPO,
                          capture_output=True, text=True, timeout=900)
  assert single.returncode == 0, single.stderr[-3000:]

  port = _free_port()
  processes = [subprocess.Popen(
      _command(tmp_path / 'two', data_dir, 4) + [
          '--distributed', f'--coordinator_address=127.0.0.1:{port}',
          '--num_processes=2', f'--process_id={i}',
          '--jax_cpu_collectives_implementation=gloo'],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outputs = [p.communicate(timeout=900) for p in processes]
  for p, (_, stderr) in zip(processes, outputs):
    assert p.returncode == 0, stderr[-3000:]
  (stdout_0, stderr_0), (stdout_1, stderr_1) = outputs
  assert 'process 0/2' in stderr_0 and 'process 1/2' in stderr_1
  assert "8 devices" in stderr_0
  # Process 0 alone reports.
  assert 'Test accuracy' in stdout_0 and 'Test accuracy' not in stdout_1

  single_losses, multi_losses = _train_losses(tmp_path / 'one'), _train_losses(tmp_path / 'two')
  assert sorted(single_losses) == list(range(1, STEPS + 1)), single.stderr[-2000:]
  assert sorted(multi_losses) == sorted(single_losses)
  for step, loss in single_losses.items():
    assert multi_losses[step] == pytest.approx(loss, rel=1e-4), step
  assert single.stdout.splitlines()[-1] == stdout_0.splitlines()[-1]

  # The two-process checkpoint restores here (one process, 8 devices).
  assert jax.device_count() == 8
  restored = [trained_model.load(str(tmp_path / name)) for name in ('one', 'two')]
  assert [r.step for r in restored] == [STEPS, STEPS]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               *(jax.device_get(r.variables) for r in restored))
