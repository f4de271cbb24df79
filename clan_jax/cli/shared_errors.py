"""The images that every run gets wrong: what a task's ceiling is made of.

  python -m clan_jax.cli.shared_errors \
    --workdirs=workdirs/ablation/clan/lr0.01/seed0,workdirs/ablation/clan/lr0.01/seed1 \
    --out=workdirs/shared_errors

Each run is read at its latest checkpoint. Writes shared_errors.json (each
run's error count; the images every run gets wrong, with each run's
prediction) and, on the synthetic dataset, what tells each such image from
the species predicted (the details, and the pixels of the evaluation crop
where they differ) with shared_errors.png, the images next to the same birds
drawn as the predicted species. The library code is
`clan_jax.experiments.shared_errors`.
"""
from absl import app, flags

from clan_jax import storage
from clan_jax.cli import program
from clan_jax.experiments import shared_errors

flags.DEFINE_list('workdirs', None, 'train.py workdirs trained on one dataset, at least 2.',
                  required=True)
flags.DEFINE_string('split', 'test', 'The split to classify.')
flags.DEFINE_string('out', None, 'Directory for shared_errors.json and .png.', required=True)
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  program.check_storage('out')
  for workdir in FLAGS.workdirs:
    storage.check(workdir, '--workdirs')
  summary = shared_errors.write(FLAGS.workdirs, FLAGS.out, FLAGS.split)
  for run in summary['runs']:
    print(f"{run['workdir']} step {run['step']}: {run['errors']} of "
          f"{summary['num_examples']} wrong")
  print(f"{len(summary['shared_errors'])} wrong in every run; wrote {FLAGS.out}")


if __name__ == '__main__':
  program.run(main)
