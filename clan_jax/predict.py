"""Top-k classes of image files under a trained CLAN, and optionally their attention maps.

  python -m clan_jax.predict --checkpoint=workdirs/default bird.jpg other.png
  python -m clan_jax.predict --checkpoint=workdirs/default --top_k=3 \\
      --attention_dir=/tmp/attention --query_point=60,40 bird.jpg

Images (JPEG, PNG, GIF, BMP; any size, greyscale or with alpha) go through the
evaluation preprocessing (`input_pipeline.preprocess_for_eval`) and are
classified in batches over all local devices. A file that cannot be read is
reported on stderr and skipped; the others are still classified, and the exit
status is 1.
"""
from collections.abc import Sequence
import dataclasses
import math
import os
import sys

from absl import app, flags
import jax
import numpy as np

from clan_jax import attention_maps, sharding, trained_model, user_errors
from clan_jax.data import input_pipeline
from clan_jax.training import steps

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Prediction:
  """The top-k of one image file, or why there is none.

  Attributes:
    path: the file.
    top_k: [(class name, probability)], most probable first; None on error.
    error: what went wrong reading the file; None if it was classified.
  """
  path: str
  top_k: list[tuple[str, float]] | None = None
  error: str | None = None


def probabilities(trained: trained_model.TrainedModel,
                  images: Sequence[np.ndarray], *, batch_size: int | None = None,
                  flip_tta: bool = False) -> np.ndarray:
  """Class probabilities of the combined prediction: uint8 RGB [H, W, 3] each -> [N, K].

  With `combine='mean_softmax'` the combined scores are already the mean of
  the branches' probabilities; with 'sum_logits' they are a softmax of the
  summed logits.

  Args:
    trained: a loaded workdir; its mesh shards each batch.
    images: decoded images of any sizes, preprocessed as evaluation does.
    batch_size: images per step, rounded up to a multiple of the device count
      (default: config.eval_batch_size). The last batch is padded.
    flip_tta: average each image with its mirror image.
  """
  config = trained.config
  state = trained.eval_state()
  mesh = trained.mesh
  devices = sharding.num_batch_shards(mesh)
  batch_size = batch_size or config.eval_batch_size
  batch_size = math.ceil(batch_size / devices) * devices
  predict_step = steps.jit_predict_step(mesh, sharding.state_sharding(mesh, state),
                                        flip_tta=flip_tta)

  def local_batches():
    for start in range(0, len(images), batch_size):
      inputs = [np.asarray(input_pipeline.preprocess_for_eval(image, config))
                for image in images[start:start + batch_size]]
      # Zeros pad the last batch to the one compiled shape.
      inputs += [np.zeros_like(inputs[0])] * (batch_size - len(inputs))
      yield {'image': np.stack(inputs)}

  combined = [np.asarray(predict_step(state, batch)['combined'])
              for batch in sharding.to_global_batches(local_batches(),
                                                      sharding.batch_sharding(mesh))]
  combined = np.concatenate(combined)[:len(images)]
  if config.model.combine == 'sum_logits':
    return np.asarray(jax.nn.softmax(combined, axis=-1))
  return combined


def predict_files(trained: trained_model.TrainedModel, paths: Sequence[str], *,
                  top_k: int = 5, batch_size: int | None = None, flip_tta: bool = False,
                  attention_dir: str | None = None,
                  query_point: tuple[float, float] | None = None) -> list[Prediction]:
  """Classifies image files; a file that is not an image gets an error, not an exception.

  Args:
    trained: a loaded workdir.
    paths: image files.
    top_k: classes per image.
    batch_size, flip_tta: see `probabilities`.
    attention_dir: if set, the attention overlays of each image are saved here
      as `<file name>_<clsa|clca>_<tap>.png`.
    query_point: the CLCA query (x, y) in every image's pixels; None: centres.

  Returns:
    One Prediction per path, in order.

  Raises:
    ValueError: `query_point` is outside the part of an image the model sees.
  """
  images = {}
  errors = {}
  for path in paths:
    try:
      images[path] = input_pipeline.read_image(path)
    except (FileNotFoundError, ValueError) as e:
      errors[path] = str(e)
  if images and attention_dir:
    # First, so that a query point outside an image's crop fails fast.
    for path, maps in zip(images, attention_maps.compute(
        trained, list(images.values()), [query_point] * len(images))):
      attention_maps.save(maps, attention_dir, os.path.basename(path))
  if images:
    probs = probabilities(trained, list(images.values()), batch_size=batch_size,
                          flip_tta=flip_tta)
    top = np.argsort(-probs, axis=-1, kind='stable')[:, :top_k]
    ranked = {path: [(trained.class_names[c], float(p[c])) for c in classes]
              for path, p, classes in zip(images, probs, top)}
  return [Prediction(path, top_k=ranked[path]) if path in images
          else Prediction(path, error=errors[path]) for path in paths]


def _parse_point(text: str | None) -> tuple[float, float] | None:
  if text is None:
    return None
  try:
    x, y = (float(v) for v in text.split(','))
  except ValueError as e:
    raise app.UsageError(f'--query_point={text!r} must be "x,y", e.g. 60,40.') from e
  return x, y


def _define_flags() -> None:
  # Here rather than at import, so that the commands' modules import together.
  flags.DEFINE_string('checkpoint', None, 'A train.py workdir (config.json, classes.json, '
                      'checkpoints/).', required=True)
  flags.DEFINE_integer('step', None, 'Checkpoint step; default: the latest.')
  flags.DEFINE_integer('top_k', 5, 'Classes to print per image.')
  flags.DEFINE_integer('batch_size', None, 'Images per forward pass (rounded up to a '
                       'multiple of the device count); default: config.eval_batch_size.')
  flags.DEFINE_bool('flip_tta', False, 'Average each image with its mirror image '
                    '(steps.eval_outputs).')
  flags.DEFINE_string('attention_dir', None, 'If set, write the attention-map overlays of '
                      'every image here (attention_maps.save).')
  flags.DEFINE_string('query_point', None, 'CLCA query "x,y" in the pixels of every image; '
                      'default: each image\'s centre.')


def main(argv):
  paths = argv[1:]
  if not paths:
    raise app.UsageError('Give at least one image file after the flags.')
  if FLAGS.top_k < 1:
    raise app.UsageError(f'--top_k={FLAGS.top_k} must be at least 1.')
  query_point = _parse_point(FLAGS.query_point)
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
  _define_flags()
  jax.config.config_with_absl()
  user_errors.run(main)
