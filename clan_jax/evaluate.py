"""Evaluates a trained CLAN on a whole split: top-1/top-5, per-class accuracy, confusion matrix.

  python -m clan_jax.evaluate --checkpoint=workdirs/default
  python -m clan_jax.evaluate --checkpoint=workdirs/default --split=train --step=1400 \\
      --flip_tta --out=/tmp/eval
  python -m clan_jax.evaluate --checkpoint=/tmp/cub --config=configs/cub.py \\
      --config.data_dir=/data/tfds --config.mesh.data=1

The workdir's config.json gives the model and, by default, the data. With
`--config`, the data and evaluation fields of that config (`OVERRIDABLE_FIELDS`,
with any `--config.<field>` overrides) replace the stored ones; its model
fields are ignored, as the checkpoint fixes the model.

Evaluation is the training loop's own (`trainer.evaluate` over
`steps.eval_step`): jitted, sharded over config.mesh like training, the last
batch padded and masked so that every image counts exactly once.
"""
import json
import os
import re
from typing import Any

from absl import app, flags, logging
import jax
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from clan_jax import models, sharding, trained_model, user_errors, visualization
from clan_jax.data import input_pipeline
from clan_jax.training import steps, trainer
from clan_jax.user_errors import UserError

FLAGS = flags.FLAGS

# What `--config` may change: where and how the data are read, and the devices.
OVERRIDABLE_FIELDS = ('dataset', 'data_dir', 'synthetic', 'eval_split', 'resize_size',
                      'image_size', 'crop_to_bbox', 'eval_batch_size', 'cache', 'mesh')
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
    split: default: config.eval_split.
    step: a checkpoint step; default: the latest.
    flip_tta: evaluate with flip test-time augmentation too.
    overrides: new values of some of `OVERRIDABLE_FIELDS`, e.g.
      {'data_dir': ..., 'mesh': {'data': 1}}.

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
  config.update(overrides or {})
  split = split or config.eval_split
  mesh = sharding.create_mesh(config.mesh)
  sharding.check_batch_size(config.eval_batch_size, mesh, 'eval_batch_size')
  trained = trained_model.load(workdir, step=step, mesh=mesh)
  builder = input_pipeline.get_dataset_builder(config)
  if input_pipeline.class_names(builder) != trained.class_names:
    raise UserError(
        f'The classes of config.dataset={config.dataset!r} in {builder.data_dir} are not '
        f'the {len(trained.class_names)} classes of {workdir}/{trained_model.CLASSES_FILE}: '
        'evaluate on the dataset the model was trained on (--config).')

  branches = models.branch_names(config.model.mid_level_taps, config.model.use_clca,
                                 config.model.use_clsa)
  metrics_cls = steps.eval_metrics_collection(branches)
  state = trained.eval_state()
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
    results['metrics'][mode] = trainer.evaluate(metrics_step, state, batches, metrics_cls)
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
  os.makedirs(out_dir, exist_ok=True)
  paths = [os.path.join(out_dir, RESULTS_FILE)]
  with open(paths[0], 'w') as f:
    json.dump(results, f, indent=1)
  for mode, confusion in results['confusion_matrix'].items():
    accuracy = results['metrics'][mode]['top1_combined']
    title = (f"{os.path.basename(os.path.normpath(results['workdir']))} step "
             f"{results['step']}, {results['split']}, {mode}: top-1 {accuracy:.2%}")
    paths.append(os.path.join(out_dir, f'confusion_{mode}.png'))
    confusion_image(np.asarray(confusion), title).save(paths[-1])
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
  return os.path.join(workdir, 'eval', re.sub(r'[^\w.-]+', '_', split) + f'_step{step}')


def _define_flags() -> None:
  # Here rather than at import, so that the commands' modules import together.
  flags.DEFINE_string('checkpoint', None, 'A train.py workdir (config.json, classes.json, '
                      'checkpoints/).', required=True)
  user_errors.define_config_file(
      'config', None, 'Optional config file whose data and evaluation fields '
      "replace the workdir's (see clan_jax/evaluate.py); its model fields are ignored.",
      lock_config=True)
  flags.DEFINE_string('split', None, 'Split to evaluate, e.g. test or "train[90%:]"; '
                      'default: config.eval_split.')
  flags.DEFINE_integer('step', None, 'Checkpoint step; default: the latest.')
  flags.DEFINE_bool('flip_tta', False, 'Also evaluate with horizontal-flip test-time '
                    'augmentation (steps.eval_outputs).')
  flags.DEFINE_string('out', None, 'Directory for results.json and the confusion '
                      'matrices; default: <checkpoint>/eval/<split>_step<step>.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  overrides = None
  config = user_errors.config_flag()
  if config is not None:
    overrides = {field: config[field] for field in OVERRIDABLE_FIELDS if field in config}
  results = evaluate(FLAGS.checkpoint, split=FLAGS.split, step=FLAGS.step,
                     flip_tta=FLAGS.flip_tta, overrides=overrides)
  if jax.process_index() == 0:
    out_dir = FLAGS.out or _default_out_dir(FLAGS.checkpoint, results['split'],
                                            results['step'])
    paths = write_results(results, out_dir)
    print(_summary(results))
    print('Wrote ' + ', '.join(paths))


if __name__ == '__main__':
  _define_flags()
  jax.config.config_with_absl()
  user_errors.run(main)
