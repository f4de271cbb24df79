"""Evaluates a trained CLAN on a whole split: top-1/top-5, per-class accuracy, confusion matrix.

The command is `python -m clan_jax.cli.evaluate`. The workdir's config.json
gives the model and, by default, the data. With
`--config`, the groups of that config in `OVERRIDABLE_FIELDS`, `data` and
`mesh` (with any `--config.<field>` overrides), replace the stored ones; its
other fields are ignored, as the checkpoint fixes the model.

Evaluation is the training loop's own (`steps.evaluate` over
`steps.eval_step`): jitted, sharded over config.mesh like training, the last
batch padded and masked so that every image counts exactly once.
"""
import json
from typing import Any

from absl import logging
import jax
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from clan_jax import models, sharding, storage
from clan_jax.data import input_pipeline
from clan_jax.inference import visualization
from clan_jax.training import steps, train_state
from clan_jax.user_errors import UserError
from clan_jax.workdir import trained_model

# The config groups evaluation may change: where and how the data are read, and the devices.
OVERRIDABLE_FIELDS = ('data', 'mesh')
NO_TTA = 'no_tta'
FLIP_TTA = 'flip_tta'
RESULTS_FILE = 'results.json'
TTA_DEFINITION = ('flip_tta: the mean over each image and its horizontal mirror image, '
                  'of each branch\'s logits and of the combined scores.')


def evaluate(workdir: str, *, split: str | None = None, step: int | None = None,
             flip_tta: bool = False, overrides: dict[str, Any] | None = None
             ) -> dict[str, Any]:
  """Evaluates the checkpoint of `workdir` at `step` (default: the latest) on `split`.

  Args:
    workdir: a train.py workdir.
    split: default: config.data.eval_split.
    step: a checkpoint step; default: the latest.
    flip_tta: evaluate with flip test-time augmentation too.
    overrides: {group: fields}, groups of `OVERRIDABLE_FIELDS`; each group's
      fields replace the stored ones, e.g. {'data': {'data_dir': ...},
      'mesh': {'data': 1}}.

  Returns:
    {'workdir', 'step', 'split', 'devices', 'class_names',
     'metrics': {mode: {'top1_<branch>', 'top5_<branch>', ..., 'loss',
                        'num_examples'}},
     'per_class_top1': {mode: {class name: top-1 of the combination, or None
                               for a class absent from the split}},
     'confusion_matrix': {mode: [[count]] (rows: labels, columns: combined
                                           predictions)}}
    for mode 'no_tta', and 'flip_tta' when `flip_tta`.

  Raises:
    ValueError: an override that is not in OVERRIDABLE_FIELDS, or a dataset
      whose classes are not the model's.
  """
  config = trained_model.load_config(workdir)
  unknown = sorted(set(overrides or {}) - set(OVERRIDABLE_FIELDS))
  if unknown:
    raise UserError(f'Cannot override {unknown} for evaluation: the checkpoint fixes '
                    f'them. Only {list(OVERRIDABLE_FIELDS)} can change.')
  for group, fields in (overrides or {}).items():
    config[group].update(fields)
  split = split or config.data.eval_split
  mesh = sharding.create_mesh(config.mesh)
  sharding.check_batch_size(config.data.eval_batch_size, mesh, 'data.eval_batch_size')
  trained = trained_model.load(workdir, step=step, mesh=mesh)
  builder = input_pipeline.get_dataset_builder(config)
  if input_pipeline.class_names(builder) != trained.class_names:
    raise UserError(
        f'The classes of config.data.dataset={config.data.dataset!r} in {builder.data_dir} are not '
        f'the {len(trained.class_names)} classes of {workdir}/{trained_model.CLASSES_FILE}: '
        'evaluate on the dataset the model was trained on (--config).')

  branches = models.branch_names(config.model.mid_level_taps, config.model.use_mid_block,
                                 config.model.use_top_block)
  metrics_cls = steps.eval_metrics_collection(branches)
  state = train_state.eval_state(trained.model, trained.variables, trained.step)
  state_sharding = sharding.state_sharding(mesh, state)
  results = {'workdir': workdir, 'step': trained.step, 'split': split,
             'devices': mesh.size, 'class_names': trained.class_names,
             'flip_tta_definition': TTA_DEFINITION,
             'metrics': {}, 'per_class_top1': {}, 'confusion_matrix': {}}
  for mode in (NO_TTA, FLIP_TTA) if flip_tta else (NO_TTA,):
    eval_step = steps.jit_eval_step(mesh, state_sharding, with_confusion=True,
                                    metrics_cls=metrics_cls, flip_tta=mode == FLIP_TTA)
    confusions = []

    def metrics_step(state, batch):
      step_metrics, confusion = eval_step(state, batch)
      confusions.append(confusion)
      return step_metrics

    eval_ds, _ = input_pipeline.create_eval_dataset(config, builder, split)
    batches = sharding.to_global_batches(input_pipeline.as_numpy(eval_ds),
                                         sharding.batch_sharding(mesh))
    results['metrics'][mode] = steps.evaluate(metrics_step, state, batches, metrics_cls)
    confusion = np.asarray(jax.device_get(sum(confusions)))
    results['confusion_matrix'][mode] = confusion.tolist()
    results['per_class_top1'][mode] = per_class_accuracy(confusion, trained.class_names)
    logging.info('%s, %s: %s', split, mode, results['metrics'][mode])
  return results


def per_class_accuracy(confusion: np.ndarray, class_names: list[str]
                       ) -> dict[str, float | None]:
  """Top-1 of each class from a confusion matrix [K, K] (rows: labels)."""
  totals = confusion.sum(axis=1)
  return {name: float(confusion[i, i] / totals[i]) if totals[i] else None
          for i, name in enumerate(class_names)}


def write_results(results: dict[str, Any], out_dir: str) -> list[str]:
  """Writes results.json and one confusion_<mode>.png per mode; returns the paths."""
  directory = storage.path(out_dir)
  directory.mkdir(parents=True, exist_ok=True)
  (directory / RESULTS_FILE).write_text(json.dumps(results, indent=1))
  paths = [str(directory / RESULTS_FILE)]
  for mode, confusion in results['confusion_matrix'].items():
    accuracy = results['metrics'][mode]['top1_combined']
    title = (f"{storage.path(results['workdir']).name} step "
             f"{results['step']}, {results['split']}, {mode}: top-1 {accuracy:.2%}")
    paths.append(str(directory / f'confusion_{mode}.png'))
    storage.write_image(confusion_image(np.asarray(confusion), title), paths[-1])
  return paths


def confusion_image(confusion: np.ndarray, title: str) -> Image.Image:
  """A confusion matrix [K, K] (rows: labels, columns: predictions) as a picture.

  Each row is normalised by its number of examples, so colours are the
  fractions of a class predicted as each class (viridis: dark 0, yellow 1);
  rows and columns are labelled with class indices when they are wide enough.
  """
  num_classes = len(confusion)
  cell = int(np.clip(640 // num_classes, 2, 32))
  margin = 48
  totals = np.maximum(confusion.sum(axis=1, keepdims=True), 1)
  cells = visualization.colorize(confusion / totals)
  matrix = np.repeat(np.repeat(cells, cell, axis=0), cell, axis=1)
  size = num_classes * cell
  font = ImageFont.load_default()
  width = max(size + 2 * margin, int(font.getlength(title)) + 2 * margin)
  image = Image.new('RGB', (width, size + 2 * margin), 'white')
  image.paste(Image.fromarray(matrix), (margin, margin))
  draw = ImageDraw.Draw(image)
  draw.text((margin, 4), title, fill='black', font=font)
  draw.text((margin, margin + size + 24), 'predicted class (columns), true class (rows)',
            fill='black', font=font)
  if cell >= 12:
    for i in range(num_classes):
      centre = margin + i * cell + cell / 2
      draw.text((centre, margin - 4), str(i), fill='black', font=font, anchor='ms')
      draw.text((margin - 4, centre), str(i), fill='black', font=font, anchor='rm')
  return image
