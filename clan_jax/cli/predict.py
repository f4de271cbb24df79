"""Top-k classes of image files under a trained CLAN, and optionally their attention maps.

  python -m clan_jax.cli.predict --checkpoint=workdirs/default bird.jpg other.png
  python -m clan_jax.cli.predict --checkpoint=workdirs/default --top_k=3 \\
      --attention_dir=/tmp/attention --query_point=60,40 bird.jpg

A file that cannot be read is reported on stderr and skipped; the others are
still classified, and the exit status is 1. The library code is
`clan_jax.inference.predict`.
"""
import sys

from absl import app, flags
import jax

from clan_jax.cli import program
from clan_jax.inference.predict import predict_files
from clan_jax.workdir import trained_model

flags.DEFINE_string('checkpoint', None, 'A train.py workdir (config.json, classes.json, '
                    'checkpoints/).', required=True)
flags.DEFINE_integer('step', None, 'Checkpoint step; default: the latest.')
flags.DEFINE_integer('top_k', 5, 'Classes to print per image.')
flags.DEFINE_integer('batch_size', None, 'Images per forward pass (rounded up to a '
                     'multiple of the device count); default: config.data.eval_batch_size.')
flags.DEFINE_bool('flip_tta', False, 'Average each image with its mirror image '
                  '(steps.eval_outputs).')
flags.DEFINE_string('attention_dir', None, 'If set, write the attention-map overlays of '
                    'every image here (attention_maps.save).')
flags.DEFINE_string('query_point', None, 'Query "x,y" of the attention maps that have one, '
                    'in the pixels of every image; default: each image\'s centre.')
FLAGS = flags.FLAGS


def _parse_point(text: str | None) -> tuple[float, float] | None:
  if text is None:
    return None
  try:
    x, y = (float(v) for v in text.split(','))
  except ValueError as e:
    raise app.UsageError(f'--query_point={text!r} must be "x,y", e.g. 60,40.') from e
  return x, y


def main(argv):
  paths = argv[1:]
  if not paths:
    raise app.UsageError('Give at least one image file after the flags.')
  if FLAGS.top_k < 1:
    raise app.UsageError(f'--top_k={FLAGS.top_k} must be at least 1.')
  query_point = _parse_point(FLAGS.query_point)
  program.check_storage('checkpoint', 'attention_dir')
  # All local devices, whatever the training mesh was.
  trained = trained_model.load(FLAGS.checkpoint, step=FLAGS.step)
  try:
    predictions = predict_files(
        trained, paths, top_k=FLAGS.top_k, batch_size=FLAGS.batch_size,
        flip_tta=FLAGS.flip_tta, attention_dir=FLAGS.attention_dir, query_point=query_point)
  except ValueError as e:  # --query_point outside an image's crop
    raise app.UsageError(str(e)) from e
  for prediction in predictions:
    if prediction.error:
      print(f'error: {prediction.error}', file=sys.stderr)
      continue
    print(prediction.path)
    for name, probability in prediction.top_k:
      print(f'  {probability:7.2%}  {name}')
  if FLAGS.attention_dir:
    print(f'Attention maps in {FLAGS.attention_dir}')
  failed = sum(p.error is not None for p in predictions)
  if failed:
    print(f'{failed} of {len(predictions)} files could not be read.', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  jax.config.config_with_absl()
  program.run(main)
