"""Ablation study: plain backbone, mid block only, top block only and both, on one config.

  python -m clan_jax.cli.ablate --config=configs/default.py \
    --variants=plain,clca,clsa,clan --seeds=0,1,2,3,4 \
    --workdir=workdirs/ablation

The variants switch the blocks that config.model.mid_block and top_block
name (CLCA and CLSA by default) and keep their names from those defaults:
`plain` has neither, `clca` the mid-level block only, `clsa` the top-level
block only, `clan` both.

The protocol is the same for every variant: each (variant, learning rate,
seed) trains in its own workdir, `ROOT/<variant>/lr<rate>/seed<seed>`, with
`config.data.validation_percent` of the training split held out. A variant's
learning rate is the one with the best mean validation top-1 over seeds. Each
run is read at one step, `--select`: `final`, its last evaluation (the default:
the run at convergence), or `best_validation`, the step of its best validation
top-1 (noisy where the held-out split is small). The test split never chooses
anything. Seeds are `--seeds` (a list) or `--num_seeds`
from `--seed_offset`; every variant runs on the same seeds, so the variants
are compared seed by seed.

Finished runs are skipped (their workdir holds `ablation_run.json`), and an
interrupted one resumes from its last checkpoint, so the command can be
re-run until it completes. It writes `ROOT/ablation.md` (per variant: test
top-1 per branch, per seed, mean and sample std over seeds, the difference to
`plain` paired by seed with its standard error, and the runs that collapsed)
and `ROOT/validation.png` (validation top-1 against step, every seed and the
mean, every variant at its chosen learning rate).
"""
from collections.abc import Sequence

from absl import app, flags

from clan_jax import storage
from clan_jax.cli import program
from clan_jax.experiments import ablation, ablation_report
from clan_jax.workdir import lock

program.define_config_file(
    'config', 'configs/default.py', 'Base config; every variant overrides only '
    'config.model.use_mid_block / use_top_block, config.seed and config.optim.learning_rate.',
    lock_config=True)
flags.DEFINE_string('workdir', 'workdirs/ablation', 'Root of every run\'s workdir.')
flags.DEFINE_list('variants', list(ablation.VARIANTS),
                  f'Any of {list(ablation.VARIANTS)}: no block, the mid-level block only '
                  '(config.model.mid_block), the top-level block only (top_block), both.')
flags.DEFINE_list('seeds', [], 'The seeds every variant runs, e.g. 0,1,2,3,4; empty: '
                  '--num_seeds seeds from --seed_offset.')
flags.DEFINE_integer('num_seeds', 5, 'How many seeds, when --seeds is empty.')
flags.DEFINE_integer('seed_offset', 0, 'The first seed, when --seeds is empty.')
flags.DEFINE_integer('jobs', 1, 'Runs that train at the same time, each in its own process.')
flags.DEFINE_list('learning_rates', [],
                  'The grid every variant is tuned over (on validation); empty: '
                  'the config\'s learning_rate only.')
flags.DEFINE_integer('validation_percent', 10,
                     'Held-out share of the training split for model selection, '
                     'used when the config has none.')
flags.DEFINE_enum('select', 'final', ablation_report.SELECTIONS,
                  'The step each run is read at: its last evaluation, or its best on '
                  'validation.')
FLAGS = flags.FLAGS


def _seeds() -> list[int]:
  if not FLAGS.seeds:
    if FLAGS.num_seeds < 1 or FLAGS.seed_offset < 0:
      raise app.UsageError(f'--num_seeds={FLAGS.num_seeds} must be at least 1 and '
                           f'--seed_offset={FLAGS.seed_offset} at least 0.')
    return list(range(FLAGS.seed_offset, FLAGS.seed_offset + FLAGS.num_seeds))
  if not all(s.isdigit() for s in FLAGS.seeds) or len(set(FLAGS.seeds)) < len(FLAGS.seeds):
    raise app.UsageError(f'--seeds={",".join(FLAGS.seeds)} must be distinct integers >= 0, '
                         'e.g. --seeds=0,1,2,3,4.')
  return [int(s) for s in FLAGS.seeds]


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  unknown = sorted(set(FLAGS.variants) - set(ablation.VARIANTS))
  if unknown:
    raise app.UsageError(f'--variants has {unknown}; allowed: {list(ablation.VARIANTS)}.')
  if FLAGS.jobs < 1:
    raise app.UsageError(f'--jobs={FLAGS.jobs} must be at least 1.')
  lock.check_workdir(FLAGS.workdir)
  config = program.config_flag()
  rates = [float(r) for r in FLAGS.learning_rates] or [config.optim.learning_rate]
  try:
    table, runs = ablation.run_study(
        config, FLAGS.workdir, variants=FLAGS.variants, seeds=_seeds(),
        learning_rates=rates, validation_percent=FLAGS.validation_percent,
        select=FLAGS.select, jobs=FLAGS.jobs)
  except ablation.Stopped as stopped:
    print(stopped)  # as train.py on SIGTERM: the work is saved, exit status 0
    return
  total = sum(r['seconds'] for r in runs.values())
  print(table)
  print(f'{len(runs)} runs, {total / 60:.1f} min of training in all '
        f'(runs finished earlier count with their own time). Wrote '
        f'{storage.path(FLAGS.workdir) / ablation.REPORT_FILE} and {ablation.PLOT_FILE}.')


if __name__ == '__main__':
  program.run(main)
