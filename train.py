"""Trains and evaluates CLAN.

  python train.py                                  # demo: synthetic data, CPU, minutes
  python train.py --config=configs/cub.py --workdir=/tmp/cub --config.data.batch_size=64

Several processes (hosts) as one job, each started with the same flags plus:
  --distributed                       # Cloud TPU, SLURM, Open MPI: detected
  --distributed --coordinator_address=HOST0:1234 --num_processes=N --process_id=I
JAX's own options are flags too, e.g. --jax_cpu_collectives_implementation=gloo
--jax_num_cpu_devices=4 for a multi-process job of CPU processes. A job that
loses a process ends on every process with one line that names it and the
last complete checkpoint, status 75 (clan_jax/cli/supervisor.py).

A mistake in the config, the workdir or a file is printed as one line,
`error: ...`, with exit status 2. SIGTERM or Ctrl-C save a checkpoint of the
current step and exit with status 0; running the same command resumes.
"""
import os
import sys

from clan_jax.cli import supervisor

DEFAULT_WORKDIR = 'workdirs/default'

# Before the imports below: a supervising parent needs neither TensorFlow nor
# JAX, and leaves the host's memory and accelerators to its child.
if __name__ == '__main__':
  supervisor.supervise_if_distributed(sys.argv, default_workdir=DEFAULT_WORKDIR)

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app, flags, logging
import jax

from clan_jax.cli import program
from clan_jax.experiments import source_pretraining
from clan_jax.training import trainer
from clan_jax.workdir import lock
# pylint: enable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
program.define_config_file(
    'config', os.path.join(os.path.dirname(__file__), 'configs', 'default.py'),
    'Training configuration file.', lock_config=True)
flags.DEFINE_string('workdir', DEFAULT_WORKDIR,
                    'Directory for checkpoints, TensorBoard logs and config.json. '
                    'Training resumes from the latest checkpoint found here.')
flags.DEFINE_bool('distributed', False,
                  'Call jax.distributed.initialize() first, for multi-process runs. '
                  'Without the three flags below, JAX detects the cluster (Cloud TPU, '
                  "a SLURM step, Open MPI's mpirun).")
flags.DEFINE_string('coordinator_address', None,
                    'host:port of process 0, which every process connects to.')
flags.DEFINE_integer('num_processes', None, 'Processes in the job.')
flags.DEFINE_integer('process_id', None, "This process's index, 0 .. num_processes - 1.")
flags.DEFINE_integer('heartbeat_timeout_seconds', 60,
                     'With --distributed: a process silent this long is taken as lost, and '
                     'the job ends. Long enough for the longest pause of a live process '
                     '(a compile on a busy host); JAX\'s own default is 100.', lower_bound=1)


def _cluster_flags() -> dict[str, str | int]:
  """The cluster flags given, checked: all three or none, and only with --distributed."""
  cluster = {'coordinator_address': FLAGS.coordinator_address,
             'num_processes': FLAGS.num_processes, 'process_id': FLAGS.process_id}
  given = {k: v for k, v in cluster.items() if v is not None}
  if given and len(given) < len(cluster):
    missing = sorted(set(cluster) - set(given))
    raise app.UsageError(f'--{" --".join(sorted(given))} also need --{" --".join(missing)}.')
  if given and not FLAGS.distributed:
    raise app.UsageError(f'--{" --".join(sorted(given))} need --distributed.')
  return given


def _initialize_distributed(cluster: dict[str, str | int]) -> None:
  """jax.distributed.initialize; where JAX finds no cluster to join, one line says so."""
  try:
    jax.distributed.initialize(**cluster,
                               heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_seconds)
  except ValueError as e:
    if cluster or 'coordinator_address' not in str(e):
      raise
    # JAX 0.10 and 0.11 detect Open MPI 4's mpirun only (it reads
    # OMPI_MCA_orte_hnp_uri); JAX 0.12 reads Open MPI 5's through mpi4py.
    raise app.UsageError(
        '--distributed found no cluster to join (JAX detects Cloud TPU, a SLURM step, and '
        "Open MPI's mpirun: version 4, or 5 with jax>=0.12 and mpi4py); give "
        '--coordinator_address, --num_processes and --process_id.') from None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cluster = _cluster_flags()
  if FLAGS.distributed:
    if supervisor.is_supervised():
      supervisor.exit_with_parent()
    _initialize_distributed(cluster)
  logging.info('JAX %s, process %d/%d, devices: %s', jax.__version__,
               jax.process_index(), jax.process_count(), jax.devices())
  lock.check_workdir(FLAGS.workdir)  # before any pretraining
  config = source_pretraining.apply(program.config_flag())
  results = trainer.train_and_evaluate(config, FLAGS.workdir)
  if 'stopped' in results:
    if jax.process_index() == 0:
      print(results['stopped'], flush=True)
    return
  if jax.process_index() == 0:
    print(f"\nTest accuracy (top-1, all branches combined): {results['top1_combined']:.2%} "
          f"on {results['num_examples']} images.")
    if 'best_validation_step' in results:
      print(f"Best on validation: step {results['best_validation_step']}, validation "
            f"top-1 {results['best_validation_top1_combined']:.2%}, test top-1 "
            f"{results['test_top1_combined_at_best_validation']:.2%}.")


if __name__ == '__main__':
  jax.config.config_with_absl()
  program.run(main)
