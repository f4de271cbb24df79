"""Ablation study: plain backbone, CLCA only, CLSA only and CLAN, on one config.

  python -m clan_jax.tools.ablate --config=configs/default.py \
    --variants=plain,clca,clsa,clan --seeds=3 --learning_rates=0.05,0.1 \
    --workdir=workdirs/ablation

The protocol is the same for every variant: each (variant, learning rate,
seed) trains in its own workdir, `ROOT/<variant>/lr<rate>/seed<seed>`, with
`config.validation_percent` of the training split held out. A variant's
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
import json
import os
import time

from absl import app, flags, logging

from clan_jax import user_errors
from clan_jax.tools import ablation_report
from clan_jax.training import trainer

VARIANTS = {  # name: (use_clca, use_clsa)
    'plain': (False, False),
    'clca': (True, False),
    'clsa': (False, True),
    'clan': (True, True),
}
RUN_FILE = 'ablation_run.json'

user_errors.define_config_file(
    'config', 'configs/default.py', 'Base config; every variant overrides only '
    'config.model.use_clca / use_clsa, config.seed and config.learning_rate.',
    lock_config=True)
flags.DEFINE_string('workdir', 'workdirs/ablation', 'Root of every run\'s workdir.')
flags.DEFINE_list('variants', list(VARIANTS), f'Any of {list(VARIANTS)}.')
flags.DEFINE_integer('seeds', 3, 'Seeds 0 .. seeds-1 for every variant.')
flags.DEFINE_list('learning_rates', [],
                  'The grid every variant is tuned over (on validation); empty: '
                  'the config\'s learning_rate only.')
flags.DEFINE_integer('validation_percent', 10,
                     'Held-out share of the training split for model selection, '
                     'used when the config has none.')
FLAGS = flags.FLAGS


def run_config(base, variant: str, seed: int, learning_rate: float):
  """The base config with one variant's switches, seed and learning rate."""
  config = base.copy_and_resolve_references()
  config.model.use_clca, config.model.use_clsa = VARIANTS[variant]
  config.seed = seed
  config.learning_rate = learning_rate
  if not config.validation_percent:
    config.validation_percent = FLAGS.validation_percent
  return config


def run_once(config, workdir: str) -> dict:
  """Trains (or resumes) one run; returns what `ablation_report` reads."""
  record_path = os.path.join(workdir, RUN_FILE)
  if os.path.exists(record_path):
    logging.info('ablation: %s finished earlier, skipped.', workdir)
    with open(record_path) as f:
      return json.load(f)
  start = time.time()
  trainer.train_and_evaluate(config, workdir)
  record = {'seconds': time.time() - start,
            'history': ablation_report.read_history(workdir)}
  with open(record_path, 'w') as f:
    json.dump(record, f)
  return record


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  unknown = sorted(set(FLAGS.variants) - set(VARIANTS))
  if unknown:
    raise app.UsageError(f'--variants has {unknown}; allowed: {list(VARIANTS)}.')
  if FLAGS.seeds < 1:
    raise app.UsageError(f'--seeds={FLAGS.seeds} must be at least 1.')
  rates = [float(r) for r in FLAGS.learning_rates] or [FLAGS.config.learning_rate]
  runs = {}
  # Learning rate, then seed, outermost: a study stopped early has every
  # variant on the same runs so far.
  for rate in rates:
    for seed in range(FLAGS.seeds):
      for variant in FLAGS.variants:
        workdir = os.path.join(FLAGS.workdir, variant, f'lr{rate:g}', f'seed{seed}')
        logging.info('ablation: %s, learning rate %g, seed %d -> %s', variant, rate,
                     seed, workdir)
        runs[variant, rate, seed] = run_once(
            run_config(FLAGS.config, variant, seed, rate), workdir)
  table, chosen = ablation_report.summarize(runs)
  with open(os.path.join(FLAGS.workdir, 'ablation.md'), 'w') as f:
    f.write(table)
  ablation_report.plot_validation(runs, chosen,
                                  os.path.join(FLAGS.workdir, 'validation.png'))
  total = sum(r['seconds'] for r in runs.values())
  print(table)
  print(f'{len(runs)} runs, {total / 60:.1f} min of training in all '
        f'(runs finished earlier count with their own time). Wrote '
        f"{os.path.join(FLAGS.workdir, 'ablation.md')} and validation.png.")


if __name__ == '__main__':
  user_errors.run(main)
