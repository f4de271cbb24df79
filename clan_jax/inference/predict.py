"""Top-k classes of image files under a trained CLAN, and optionally their attention maps.

The command is `python -m clan_jax.cli.predict`. Images (JPEG, PNG, GIF, BMP;
any size, greyscale or with alpha) go through the evaluation preprocessing
(`input_pipeline.preprocess_for_eval`) and are classified in batches over all
local devices. A file that cannot be read
gives a `Prediction` with its error; the others are still classified.
"""
from collections.abc import Sequence
import dataclasses
import math

import jax
import numpy as np

from clan_jax import sharding, storage
from clan_jax.data import input_pipeline
from clan_jax.inference import attention_maps
from clan_jax.training import steps, train_state
from clan_jax.workdir import trained_model


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
      (default: config.data.eval_batch_size). The last batch is padded.
    flip_tta: average each image with its mirror image.
  """
  config = trained.config
  state = train_state.eval_state(trained.model, trained.variables, trained.step)
  mesh = trained.mesh
  devices = sharding.num_batch_shards(mesh)
  batch_size = batch_size or config.data.eval_batch_size
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
      as `<file name>_<block>_<tap>.png` (e.g. `bird.png_clsa_layer2.png`).
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
      attention_maps.save(maps, attention_dir, storage.path(path).name)
  if images:
    probs = probabilities(trained, list(images.values()), batch_size=batch_size,
                          flip_tta=flip_tta)
    top = np.argsort(-probs, axis=-1, kind='stable')[:, :top_k]
    ranked = {path: [(trained.class_names[c], float(p[c])) for c in classes]
              for path, p, classes in zip(images, probs, top)}
  return [Prediction(path, top_k=ranked[path]) if path in images
          else Prediction(path, error=errors[path]) for path in paths]
