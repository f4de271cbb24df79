"""The images of a split that every run of a study gets wrong, and what tells them apart.

The command is `python -m clan_jax.cli.shared_errors`. Each run is a train.py
workdir at its latest checkpoint; all of them must be trained on one dataset.
An image wrong in every run, whatever the seed, is wrong because of the
image, not of one run's luck: these are what a task's ceiling is made of.

On the built-in synthetic dataset the question "impossible or hard?" has an
exact answer: an image can be drawn again with the details of the species the
runs predicted, the same bird in every other respect (pose, plumage,
background and every random draw; `synthetic.render_example`). Where the two
drawings differ in no pixel of the crop that evaluation keeps, the deciding
detail is invisible there and the image cannot be told apart; otherwise the
pixels that differ are the evidence the model had, counted here for each
shared error and, for comparison, for every image of the split against the
species closest to it. Over the whole split, the images that look like some
other species' in the crop give the task's ceiling: the most any model can
score (`species_evidence`).
"""
import dataclasses
import json
import math
from typing import Any

import ml_collections
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from clan_jax import storage
from clan_jax.data import input_pipeline, synthetic
from clan_jax.inference import predict
from clan_jax.user_errors import UserError
from clan_jax.workdir import trained_model

ERRORS_FILE = 'shared_errors.json'
GALLERY_FILE = 'shared_errors.png'
# A pixel counts as changed by a detail where some channel moves by more than
# this (of 255): the global colour jitter and antialiasing move no pixel of
# two drawings of one bird apart, so any change is the detail's.
VISIBLE_LEVELS = 16


@dataclasses.dataclass(frozen=True)
class SharedError:
  """One image that every run gets wrong.

  Attributes:
    index: its position in the split as TFDS reads it.
    example_id: the dataset's id of it ('' where the dataset has none).
    label: its class.
    predictions: each run's prediction, in the order of the runs.
  """
  index: int
  example_id: str
  label: int
  predictions: tuple[int, ...]


def _split_examples(config: ml_collections.ConfigDict, split: str
                    ) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
  """The split as stored: uint8 images [H, W, 3], labels [N], ids, in TFDS's order."""
  builder = input_pipeline.get_dataset_builder(config)
  images, labels, ids = [], [], []
  for example in builder.as_dataset(split=split, shuffle_files=False).as_numpy_iterator():
    images.append(example['image'])
    labels.append(example['label'])
    ids.append(example['id'].decode() if 'id' in example else '')
  return images, np.asarray(labels), ids


def find(workdirs: list[str], split: str = 'test'
         ) -> tuple[list[SharedError], dict[str, Any], list[str]]:
  """Classifies `split` with every run.

  Returns:
    (the images every run gets wrong, a summary: {'split', 'num_examples',
     'class_names', 'runs': [{'workdir', 'step', 'errors'}]}, the ids of all
     the split's images).
  """
  if len(workdirs) < 2:
    raise UserError(f'--workdirs names {len(workdirs)} run; name at least 2.')
  runs, predictions, reference = [], [], None
  for workdir in workdirs:
    trained = trained_model.load(workdir)
    if reference is None:
      reference = trained
      images, labels, ids = _split_examples(trained.config, split)
    elif trained.class_names != reference.class_names:
      raise UserError(f'{workdir} is trained on other classes than {workdirs[0]}: '
                      'name runs of one dataset.')
    predicted = np.argmax(predict.probabilities(trained, images), axis=-1)
    predictions.append(predicted)
    runs.append({'workdir': workdir, 'step': trained.step,
                 'errors': int(np.sum(predicted != labels))})
  predictions = np.stack(predictions, axis=1)  # [N, runs]
  wrong_everywhere = np.all(predictions != labels[:, None], axis=1)
  shared = [SharedError(index=int(i), example_id=ids[i], label=int(labels[i]),
                        predictions=tuple(int(p) for p in predictions[i]))
            for i in np.flatnonzero(wrong_everywhere)]
  summary = {'split': split, 'num_examples': len(labels),
             'class_names': reference.class_names, 'runs': runs}
  return shared, summary, ids


def _crop(image: np.ndarray, config: ml_collections.ConfigDict) -> np.ndarray:
  """The part of `image` [H, W, 3] that evaluation keeps (before any resizing)."""
  left, top, right, bottom = input_pipeline.eval_crop_box(*image.shape[:2], config)
  return image[math.ceil(top):math.floor(bottom), math.ceil(left):math.floor(right)]


def difference(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
  """How uint8 [H, W, 3] images differ: (the pixels where some channel moves by more
  than VISIBLE_LEVELS, the mean of that largest move over them, in levels of 255)."""
  moves = np.abs(a.astype(int) - b.astype(int)).max(axis=-1)
  changed = moves > VISIBLE_LEVELS
  return int(changed.sum()), float(moves[changed].mean()) if changed.any() else 0.0


def synthetic_config(config: ml_collections.ConfigDict) -> synthetic.SyntheticConfig:
  """The size and seed of the synthetic dataset that `config` reads."""
  builder = input_pipeline.get_dataset_builder(config)
  if builder.name != synthetic.NAME:
    raise UserError(f'config.data.dataset={config.data.dataset!r}: only '
                    f'{synthetic.NAME!r} images can be drawn again with other details.')
  return builder.builder_config


def redrawn(dataset: synthetic.SyntheticConfig, example_id: str, label: int) -> np.ndarray:
  """The synthetic example `example_id`, drawn with class `label`'s details: uint8."""
  split = example_id.rsplit('_', 1)[0]
  return synthetic.render_example(dataset, split, synthetic.example_index(example_id),
                                  details=synthetic.species(label))


def evidence(config: ml_collections.ConfigDict, dataset: synthetic.SyntheticConfig,
             error: SharedError) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
  """What tells a synthetic shared error from the class the runs predicted most often.

  Returns:
    ({'predicted': that class, 'details': {field: [its own, predicted]} where
     they differ, 'changed_pixels_in_crop', 'mean_change_levels'}
     (`difference`), the image and the same bird drawn as the predicted
     class, both as evaluation crops them, [H, W, 3] uint8).
  """
  predicted = max(set(error.predictions), key=error.predictions.count)
  true, other = synthetic.species(error.label), synthetic.species(predicted)
  image = _crop(redrawn(dataset, error.example_id, error.label), config)
  as_predicted = _crop(redrawn(dataset, error.example_id, predicted), config)
  pixels, levels = difference(image, as_predicted)
  return ({'predicted': predicted,
           'details': {field: [getattr(true, field), getattr(other, field)]
                       for field in true._fields if getattr(true, field) != getattr(other, field)},
           'changed_pixels_in_crop': pixels, 'mean_change_levels': round(levels, 1)},
          image, as_predicted)


def species_evidence(config: ml_collections.ConfigDict, dataset: synthetic.SyntheticConfig,
                     example_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
  """Each synthetic image against the same bird drawn as every other species.

  Returns:
    (`difference` in the evaluation crop from the species closest to its own
     (one detail changed; of those, the one that changes the fewest pixels),
     [N, 2]: pixels, mean change;
     how many species, its own included, look the same as it there (no pixel
     changed), [N]: a model can at best guess among them, so the mean of 1 /
     that is the most any model can score on these images.)
  """
  closest, alike = [], []
  for example_id in example_ids:
    label = synthetic.example_index(example_id) % dataset.num_classes
    image = _crop(redrawn(dataset, example_id, label), config)
    differences = {other: difference(image, _crop(redrawn(dataset, example_id, other), config))
                   for other in range(dataset.num_classes) if other != label}
    neighbours = [other for other in differences
                  if sum(a != b for a, b in zip(synthetic.species(label),
                                                synthetic.species(other))) == 1]
    closest.append(min(differences[other] for other in neighbours))
    alike.append(1 + sum(pixels == 0 for pixels, _ in differences.values()))
  return np.asarray(closest), np.asarray(alike)


def gallery(config: ml_collections.ConfigDict, dataset: synthetic.SyntheticConfig,
            shared: list[SharedError], class_names: list[str], zoom: int = 3
            ) -> tuple[list[dict[str, Any]], Image.Image]:
  """Each shared error's `evidence`, and a sheet of them: each error as evaluation
  crops it, next to the same bird drawn as the species predicted (synthetic
  data), captioned with the details that differ."""
  font = ImageFont.load_default()
  tiles, found_all = [], []
  for error in shared:
    found, *pair = evidence(config, dataset, error)
    found_all.append(found)
    height = pair[0].shape[0]
    pictures = np.concatenate([pair[0], np.full((height, 4, 3), 255, np.uint8), pair[1]], 1)
    picture = Image.fromarray(pictures).resize(
        (pictures.shape[1] * zoom, height * zoom), Image.NEAREST)
    differs = ', '.join(f'{field} {a} -> {b}' for field, (a, b) in found['details'].items())
    lines = [f'{error.example_id or error.index}: {class_names[error.label]} '
             f'-> {class_names[found["predicted"]]}',
             f'{differs}: {found["changed_pixels_in_crop"]} pixels, '
             f'by {found["mean_change_levels"]:.0f} levels']
    tile = Image.new('RGB', (max(picture.width, *(int(font.getlength(l)) for l in lines)),
                             picture.height + 12 * len(lines) + 8), 'white')
    tile.paste(picture, (0, 0))
    draw = ImageDraw.Draw(tile)
    for i, line in enumerate(lines):
      draw.text((0, picture.height + 4 + 12 * i), line, fill='black', font=font)
    tiles.append(tile)
  if not tiles:
    return found_all, Image.new('RGB', (1, 1), 'white')
  columns = min(3, len(tiles))
  cell_w, cell_h = max(t.width for t in tiles) + 10, max(t.height for t in tiles) + 10
  sheet = Image.new('RGB', (cell_w * columns, cell_h * math.ceil(len(tiles) / columns)),
                    'white')
  for i, tile in enumerate(tiles):
    sheet.paste(tile, ((i % columns) * cell_w, (i // columns) * cell_h))
  return found_all, sheet


def _spread(values: np.ndarray) -> dict[str, float]:
  return {'min': round(float(values.min()), 1), 'median': round(float(np.median(values)), 1),
          'max': round(float(values.max()), 1)}


def write(workdirs: list[str], out_dir: str, split: str = 'test') -> dict[str, Any]:
  """Finds the shared errors and writes shared_errors.json (and, on synthetic data,
  shared_errors.png) to `out_dir`; returns what the JSON holds."""
  shared, summary, example_ids = find(workdirs, split)
  config = trained_model.load_config(workdirs[0])
  summary['shared_errors'] = [{**dataclasses.asdict(error), 'predictions': list(error.predictions)}
                              for error in shared]
  directory = storage.path(out_dir)
  directory.mkdir(parents=True, exist_ok=True)
  if config.data.dataset == synthetic.NAME:
    dataset = synthetic_config(config)
    found, sheet = gallery(config, dataset, shared, summary['class_names'])
    for entry, evidence_of_one in zip(summary['shared_errors'], found):
      entry.update(evidence_of_one)
    closest, alike = species_evidence(config, dataset, example_ids)
    summary['nearest_species'] = {
        'changed_pixels_in_crop': _spread(closest[:, 0]),
        'mean_change_levels': _spread(closest[:, 1]),
        'images_with_no_changed_pixel': int(np.sum(closest[:, 0] == 0))}
    summary['ceiling'] = {
        'images_like_another_species': int(np.sum(alike > 1)),
        'top1': round(float(np.mean(1 / alike)), 4)}
    storage.write_image(sheet, str(directory / GALLERY_FILE))
  (directory / ERRORS_FILE).write_text(json.dumps(summary, indent=1))
  return summary
