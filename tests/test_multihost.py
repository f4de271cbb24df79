"""Two-process jobs (gloo collectives, 4 CPU devices each): they train as one 8-device
process, and a job that loses a process ends in one line and resumes bit for bit.
The job is started as a user would: under Open MPI's `mpirun`, in a SLURM
step's environment, and with the cluster flags on each process.

Every run goes through train.py's own entry point. The parity needs the input
pipeline's contract: the global batch of step k depends on (seed, k) only,
and process i of P feeds rows [i*B/P, (i+1)*B/P) of it.
"""
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from clan_jax.cli import supervisor
from clan_jax.workdir import trained_model
from tests import tensorboard_scalars

# Every test here starts programs or trains for a while.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3
HEARTBEAT_TIMEOUT = 10  # seconds; the programs' default is 60


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _command(workdir, data_dir, num_devices, program='train.py'):
  return [sys.executable, program, '--config=configs/test.py', f'--workdir={workdir}',
          f'--config.data.data_dir={data_dir}', f'--config.num_train_steps={STEPS}',
          '--config.log_every_steps=1', '--config.checkpoint.every_steps=3',
          '--jax_platforms=cpu', f'--jax_num_cpu_devices={num_devices}']


def _slurm_job_id() -> int:
  """A SLURM job id whose coordinator port (JAX's rule: 61440 + id % 4096) is free here."""
  for job_id in random.sample(range(4096), 4096):
    with socket.socket() as s:
      try:
        s.bind(('127.0.0.1', 61440 + job_id))
      except OSError:
        continue
    return 4096 * 100 + job_id
  raise AssertionError('no free port in 61440-65535')


def _start_mpirun_job(workdir, data_dir, logs):
  """`mpirun -np 2 python train.py --distributed`: JAX finds the job from Open MPI's
  environment. -> [mpirun's Popen]; its log, both processes', in logs/{out,err}0.txt."""
  env = dict(os.environ, JAX_COORDINATOR_PORT=str(_free_port()),
             # mpirun refuses to start as root (a container's CI) without both.
             OMPI_ALLOW_RUN_AS_ROOT='1', OMPI_ALLOW_RUN_AS_ROOT_CONFIRM='1')
  # The runtime's own connections on the loopback only; both processes share
  # this machine's cores (--oversubscribe: the machine may have fewer slots).
  # requirements-dev.txt's mpirun, next to this Python, even where its folder is not on PATH.
  mpirun = shutil.which('mpirun', path=os.pathsep.join(
      [os.path.dirname(sys.executable), os.environ.get('PATH', '')]))
  assert mpirun, 'no mpirun: pip install -r requirements-dev.txt'
  command = [mpirun, '-np', '2', '--oversubscribe', '--mca', 'oob_tcp_if_include', 'lo',
             '--mca', 'btl_tcp_if_include', 'lo', '-x', 'JAX_COORDINATOR_PORT',
             *_command(workdir, data_dir, 4), '--distributed',
             '--jax_cpu_collectives_implementation=gloo']
  with open(logs / 'out0.txt', 'w') as out, open(logs / 'err0.txt', 'w') as err:
    return [subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=err)]


def _start_job(workdir, data_dir, logs, *, fault=None, extra=(), slurm_job_id=None):
  """Starts a 2-process job writing to logs/{out,err}<i>.txt.

  fault: (process, fault) runs that process under tests/faults.py.
  slurm_job_id: instead of the cluster flags, each process gets the
  environment that `srun` gives the tasks of a 2-task step on one host, and
  JAX finds the job from it.
  """
  port = _free_port()
  processes = []
  for i in range(2):
    env = dict(os.environ)
    program = 'train.py'
    if fault is not None and fault[0] == i:
      env['CLAN_JAX_FAULT'], program = fault[1], 'tests/faults.py'
    cluster = [f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
               f'--process_id={i}']
    if slurm_job_id is not None:
      cluster = []
      env.update(SLURM_JOB_ID=str(slurm_job_id), SLURM_STEP_NODELIST='127.0.0.1',
                 SLURM_STEP_NUM_NODES='1', SLURM_NTASKS='2', SLURM_PROCID=str(i),
                 SLURM_LOCALID=str(i))
    command = _command(workdir, data_dir, 4, program) + [
        '--distributed', *cluster, '--jax_cpu_collectives_implementation=gloo', *extra]
    with open(logs / f'out{i}.txt', 'w') as out, open(logs / f'err{i}.txt', 'w') as err:
      processes.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=err))
  return processes


def _finish(processes, logs, timeout=900):
  """Waits for every process; -> [(status, stdout, stderr)]."""
  for p in processes:
    p.wait(timeout=timeout)
  return [(p.returncode, (logs / f'out{i}.txt').read_text(), (logs / f'err{i}.txt').read_text())
          for i, p in enumerate(processes)]


@pytest.fixture(scope='module')
def uninterrupted(data_dir, tmp_path_factory):
  """One process with 8 devices, and a 2-process job under `mpirun`:
  {name: (workdir, (status, stdout, stderr))}.

  The 2-process job is the reference of the lost-process test below: its
  SLURM job, lost process and restart, gives the same per-step losses and
  ends bit-identical to it.
  """
  root = tmp_path_factory.mktemp('multihost')
  # The single process first: it also generates the synthetic data.
  single = subprocess.run(_command(root / 'one', data_dir, 8), cwd=REPO,
                          capture_output=True, text=True, timeout=900)
  [two] = _finish(_start_mpirun_job(root / 'two', data_dir, root), root)
  return {'one': (root / 'one', (single.returncode, single.stdout, single.stderr)),
          'two': (root / 'two', two)}


def _train_losses(workdir) -> dict[int, float]:
  """{step: train/loss} from the TensorBoard scalars (process 0's) in `workdir`."""
  return tensorboard_scalars.read(workdir).get('train/loss', {})


def test_an_mpirun_job_trains_like_one_process_and_its_checkpoint_restores(uninterrupted):
  """`mpirun -np 2 ... --distributed`: JAX finds the job from Open MPI's environment."""
  (one, single), (two, (status, stdout, stderr)) = uninterrupted['one'], uninterrupted['two']
  assert single[0] == 0, single[2][-3000:]
  assert status == 0, stderr[-3000:]
  assert 'process 0/2' in stderr and 'process 1/2' in stderr
  assert '8 devices' in stderr
  # Process 0 alone reports.
  assert stdout.count('Test accuracy') == 1
  assert single[1].splitlines()[-1] == stdout.splitlines()[-1]

  single_losses, multi_losses = _train_losses(one), _train_losses(two)
  assert sorted(single_losses) == list(range(1, STEPS + 1)), single[2][-2000:]
  assert sorted(multi_losses) == sorted(single_losses)
  for step, loss in single_losses.items():
    assert multi_losses[step] == pytest.approx(loss, rel=1e-4), step

  # The two-process checkpoint restores here (one process, 8 devices).
  assert jax.device_count() == 8
  restored = [trained_model.load(str(workdir)) for workdir in (one, two)]
  assert [r.step for r in restored] == [STEPS, STEPS]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               *(jax.device_get(r.variables) for r in restored))


def test_distributed_where_there_is_no_cluster_says_so_in_one_line(tmp_path):
  # What Open MPI 5's mpirun gives JAX before 0.12 too: nothing it detects.
  env = {k: v for k, v in os.environ.items() if not k.startswith(('SLURM_', 'OMPI_'))}
  run = subprocess.run(_command(tmp_path, tmp_path / 'data', 1) + ['--distributed'], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 2, run.stderr[-3000:]
  assert 'Traceback' not in run.stderr
  assert run.stderr.strip().splitlines()[-1].startswith(
      'error: --distributed found no cluster to join (JAX detects Cloud TPU, a SLURM step, '
      "and Open MPI's mpirun")
  assert not (tmp_path / 'data').exists()


@pytest.mark.parametrize('lost, slurm', [(1, True), (0, False)],
                         ids=['1-slurm', '0-flags'])
def test_a_lost_process_ends_the_job_in_one_line_and_the_restart_resumes_exactly(
    uninterrupted, data_dir, tmp_path, lost, slurm):
  """kill -9 of one process while the job runs: the other ends at once, plainly.

  The restart is run after the loss of process 1 only: what it reads (the
  checkpoints of the shared workdir) does not depend on which process was lost,
  and each restart is a two-process job of the suite's time. That job, and its
  restart, run as the tasks of a SLURM step (`--distributed` alone, in the
  environment `srun` gives each task, so that JAX's own SLURM detection finds
  the job), and their losses, step by step, are the mpirun job's: the SLURM
  test, without a job of its own.
  """
  workdir, logs = tmp_path / 'workdir', tmp_path
  every_step = ['--config.checkpoint.every_steps=1',
                f'--heartbeat_timeout_seconds={HEARTBEAT_TIMEOUT}']
  # The process to lose stops before saving step 2, so the kill lands mid-job.
  processes = _start_job(workdir, data_dir, logs, fault=(lost, 'pause:2'), extra=every_step,
                         slurm_job_id=_slurm_job_id() if slurm else None)
  deadline = time.monotonic() + 600
  while 'paused at step 2' not in (logs / f'err{lost}.txt').read_text():
    assert time.monotonic() < deadline and processes[lost].poll() is None, (
        (logs / f'err{lost}.txt').read_text()[-3000:])
    time.sleep(0.2)
  processes[lost].send_signal(signal.SIGKILL)
  killed_at = time.monotonic()
  survivor = processes[1 - lost]
  survivor.wait(timeout=300)
  seconds = time.monotonic() - killed_at
  processes[lost].wait()
  stderr = (logs / f'err{1 - lost}.txt').read_text()

  assert survivor.returncode == supervisor.LOST_PROCESS_STATUS, stderr[-3000:]
  assert seconds < HEARTBEAT_TIMEOUT + 30, seconds
  last_line = stderr.strip().splitlines()[-1]
  last_step = max(ocp.utils.checkpoint_steps(workdir / 'checkpoints'))
  assert last_line.startswith(f'error: the job lost process {lost}'), last_line
  assert f'The last complete checkpoint is step {last_step} in {workdir}' in last_line
  details = last_line.rsplit('Details: ', 1)[1]
  assert 'JAX distributed service' in open(details).read()
  for noise in ('Traceback', 'Fatal Python error', 'Terminating process', '@ 0x'):
    assert noise not in stderr, noise

  if lost == 0:
    return
  # Restarted, the job resumes from that checkpoint and ends where the
  # uninterrupted one did, to the bit.
  # A new SLURM job: a new id, and with it a new coordinator port.
  restarted = _finish(_start_job(workdir, data_dir, logs, slurm_job_id=_slurm_job_id()), logs)
  for status, _, err in restarted:
    assert status == 0, err[-3000:]
  assert 'process 0/2' in restarted[0][2] and 'process 1/2' in restarted[1][2]
  assert f'at step {last_step}' in restarted[0][2]
  want = jax.device_get(trained_model.load(str(uninterrupted['two'][0])).variables)
  got = jax.device_get(trained_model.load(str(workdir)).variables)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  # Step by step, the SLURM job (the lost one, then the restart) is the mpirun one.
  want_losses, got_losses = _train_losses(uninterrupted['two'][0]), _train_losses(workdir)
  assert sorted(got_losses) == sorted(want_losses) == list(range(1, STEPS + 1))
  for step, loss in want_losses.items():
    assert got_losses[step] == pytest.approx(loss, rel=1e-4), step
