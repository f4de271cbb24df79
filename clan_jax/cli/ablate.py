"""Ablation study: plain backbone, CLCA only, CLSA only and CLAN, on one config.

  python -m clan_jax.cli.ablate --config=configs/default.py \
    --variants=plain,clca,clsa,clan --seeds=3 --learning_rates=0.05,0.1 \
    --workdir=workdirs/ablation

The protocol is the same for every variant: each (variant, learning rate,
seed) trains in its own workdir, `ROOT/<variant>/lr<rate>/seed<seed>`, with
`config.data.validation_percent` of the training split held out. A variant's
learning rate is the one with the best mean validation top-1 over seeds; each
run's test accuracy is read at the step of its best validation top-1. The test
split never chooses anything.

Finished runs are skipped (their workdir holds `ablation_run.json`), and an
interrupted one resumes from its last checkpoint, so the command can be
re-run until it completes. It writes `ROOT/ablation.md` (mean +- sample std
over seeds of test top-1, per branch and combined) and `ROOT/validation.png`
(validation top-1 against step, mean over seeds, every variant at its chosen
learning rate).
"""
from collections.abc import Sequence
import os

from absl import app, flags

from clan_jax import user_errors
from clan_jax.experiments import ablation

user_errors.define_config_file(
    'config', 'configs/default.py', 'Base config; every variant overrides only '
    'config.model.use_clca / use_clsa, config.seed and config.optim.learning_rate.',
    lock_config=True)
flags.DEFINE_string('workdir', 'workdirs/ablation', 'Root of every run\'s workdir.')
flags.DEFINE_list('variants', list(ablation.VARIANTS), f'Any of {list(ablation.VARIANTS)}.')
flags.DEFINE_integer('seeds', 3, 'Seeds 0 .. seeds-1 for every variant.')
flags.DEFINE_list('learning_rates', [],
                  'The grid every variant is tuned over (on validation); empty: '
                  'the config\'s learning_rate only.')
flags.DEFINE_integer('validation_percent', 10,
                     'Held-out share of the training split for model selection, '
                     'used when the config has none.')
FLAGS = flags.FLAGS


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  unknown = sorted(set(FLAGS.variants) - set(ablation.VARIANTS))
  if unknown:
    raise app.UsageError(f'--variants has {unknown}; allowed: {list(ablation.VARIANTS)}.')
  if FLAGS.seeds < 1:
    raise app.UsageError(f'--seeds={FLAGS.seeds} must be at least 1.')
  rates = [float(r) for r in FLAGS.learning_rates] or [FLAGS.config.optim.learning_rate]
  table, runs = ablation.run_study(
      FLAGS.config, FLAGS.workdir, variants=FLAGS.variants, seeds=FLAGS.seeds,
      learning_rates=rates, validation_percent=FLAGS.validation_percent)
  total = sum(r['seconds'] for r in runs.values())
  print(table)
  print(f'{len(runs)} runs, {total / 60:.1f} min of training in all '
        f'(runs finished earlier count with their own time). Wrote '
        f'{os.path.join(FLAGS.workdir, ablation.REPORT_FILE)} and {ablation.PLOT_FILE}.')


if __name__ == '__main__':
  user_errors.run(main)
