"""Evaluates a trained CLAN on a whole split: top-1/top-5, per-class accuracy, confusion matrix.

  python -m clan_jax.cli.evaluate --checkpoint=workdirs/default
  python -m clan_jax.cli.evaluate --checkpoint=workdirs/default --split=train --step=1400 \\
      --flip_tta --out=/tmp/eval
  python -m clan_jax.cli.evaluate --checkpoint=/tmp/cub --config=configs/cub.py \\
      --config.data.data_dir=/data/tfds --config.mesh.data=1

The library code is `clan_jax.inference.evaluate`; this module holds the flags.
"""
import re
from typing import Any

from absl import app, flags
import jax

from clan_jax import storage
from clan_jax.cli import program
from clan_jax.inference import evaluate
from clan_jax.inference.evaluate import NO_TTA

flags.DEFINE_string('checkpoint', None, 'A train.py workdir (config.json, classes.json, '
                    'checkpoints/).', required=True)
program.define_config_file(
    'config', None, 'Optional config file whose data and evaluation fields '
    "replace the workdir's (see clan_jax/inference/evaluate.py); its model fields are ignored.",
    lock_config=True)
flags.DEFINE_string('split', None, 'Split to evaluate, e.g. test or "train[90%:]"; '
                    'default: config.data.eval_split.')
flags.DEFINE_integer('step', None, 'Checkpoint step; default: the latest.')
flags.DEFINE_bool('flip_tta', False, 'Also evaluate with horizontal-flip test-time '
                  'augmentation (steps.eval_outputs).')
flags.DEFINE_string('out', None, 'Directory for results.json and the confusion '
                    'matrices; default: <checkpoint>/eval/<split>_step<step>.')
FLAGS = flags.FLAGS


def _summary(results: dict[str, Any]) -> str:
  modes = list(results['metrics'])
  names = [k[len('top1_'):] for k in results['metrics'][NO_TTA] if k.startswith('top1_')]
  header = f"{'':>10}" + ''.join(f'{mode + " top1":>16}{mode + " top5":>16}' for mode in modes)
  lines = [f"{results['workdir']} step {results['step']} on '{results['split']}': "
           f"{results['metrics'][NO_TTA]['num_examples']} images, "
           f"{results['devices']} devices.", header]
  for name in names:
    lines.append(f'{name:>10}' + ''.join(
        f"{results['metrics'][mode][f'top1_{name}']:>16.2%}"
        f"{results['metrics'][mode][f'top5_{name}']:>16.2%}" for mode in modes))
  return '\n'.join(lines)


def _default_out_dir(workdir: str, split: str, step: int) -> str:
  # Split strings such as 'train[90%:]' hold characters unwelcome in paths.
  return str(storage.path(workdir) / 'eval' / (re.sub(r'[^\w.-]+', '_', split) + f'_step{step}'))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  program.check_storage('checkpoint', 'out')
  overrides = None
  config = program.config_flag()
  if config is not None:
    overrides = {field: config[field] for field in evaluate.OVERRIDABLE_FIELDS if field in config}
  results = evaluate.evaluate(FLAGS.checkpoint, split=FLAGS.split, step=FLAGS.step,
                              flip_tta=FLAGS.flip_tta, overrides=overrides)
  if jax.process_index() == 0:
    out_dir = FLAGS.out or _default_out_dir(FLAGS.checkpoint, results['split'],
                                            results['step'])
    paths = evaluate.write_results(results, out_dir)
    print(_summary(results))
    print('Wrote ' + ', '.join(paths))


if __name__ == '__main__':
  jax.config.config_with_absl()
  program.run(main)
