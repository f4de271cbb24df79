"""Trains and evaluates CLAN.

  python train.py                                  # demo: synthetic data, CPU, minutes
  python train.py --config=configs/cub.py --workdir=/tmp/cub --config.batch_size=64

A mistake in the config, the workdir or a file is printed as one line,
`error: ...`, with exit status 2. SIGTERM or Ctrl-C save a checkpoint of the
current step and exit with status 0; running the same command resumes.
"""
import os

from absl import app, flags, logging
import jax

from clan_jax import user_errors
from clan_jax.training import trainer

FLAGS = flags.FLAGS
user_errors.define_config_file(
    'config', os.path.join(os.path.dirname(__file__), 'configs', 'default.py'),
    'Training configuration file.', lock_config=True)
flags.DEFINE_string('workdir', 'workdirs/default',
                    'Directory for checkpoints, TensorBoard logs and config.json. '
                    'Training resumes from the latest checkpoint found here.')
flags.DEFINE_bool('distributed', False,
                  'Call jax.distributed.initialize() first, for multi-process runs; '
                  'TPU pods and SLURM detect the cluster themselves.')


def _quiet_library_info(record) -> bool:
  """Keeps orbax's and TFDS's per-save and per-read INFO lines out of the console."""
  noisy = ('/orbax/', '/tensorflow_datasets/')
  return record.levelno > logging.converter.STANDARD_INFO or not any(
      part in record.pathname for part in noisy)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_quiet_library_info)
  if FLAGS.distributed:
    jax.distributed.initialize()
  logging.info('JAX %s, process %d/%d, devices: %s', jax.__version__,
               jax.process_index(), jax.process_count(), jax.devices())
  results = trainer.train_and_evaluate(user_errors.config_flag(), FLAGS.workdir)
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
  user_errors.run(main)
