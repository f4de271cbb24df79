"""The paper's regime in miniature: a backbone pretrained on a coarser task, then fine-tuned.

The paper fine-tunes an ImageNet backbone; the demo cannot download one, so it
makes its own. `apply(config)` trains the plain backbone of `config.model` on
the synthetic dataset's source task (`synthetic.py`, `source=True`: 16
coarse classes, wing colours the demo's species never have times eye times
beak, the tail at random, drawn as other images), saves it as a backbone `.npz` under the data directory, and returns
`config` with `config.init.backbone_weights` pointing at it, exactly as a user
points it at converted ImageNet weights. The file is made once per pretraining
recipe and backbone and then reused: its directory is named by a hash of
everything that determines its contents, and a run that is interrupted
resumes from its checkpoint.

`config.init.source_pretraining` holds the recipe: source images per class,
steps, learning rate. Everything else (backbone, image sizes, batch size,
optimizer) is the target config's.
"""
import hashlib
import json

from absl import logging
from flax import traverse_util
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from clan_jax import storage
from clan_jax.data import synthetic
from clan_jax.models import torchvision_weights
from clan_jax.training import config_validation, optimizer, trainer
from clan_jax.user_errors import UserError
from clan_jax.workdir import compatibility, trained_model

WEIGHTS_FILE = 'backbone.npz'
CACHE_DIR = 'clan_synthetic_source_backbones'  # under the data directory


def source_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The pretraining run: the plain backbone of `config` on the source task."""
  recipe = config.init.source_pretraining
  # A copy without old field names, which the switches set below would leave stale.
  source = compatibility.without_old_names(config)
  source.init.source_pretraining.enabled = False
  source.init.backbone_weights = None
  source.init.checkpoint = None
  source.data.synthetic.source = True
  # The source task stands in for ImageNet: one clean task whatever the target's
  # difficulty, so every target setting fine-tunes the same cached backbone.
  source.data.synthetic.min_scale = synthetic.DEFAULT_MIN_SCALE
  source.data.synthetic.occluders = 0
  source.data.synthetic.num_classes = synthetic.SOURCE_CLASSES
  source.data.synthetic.train_per_class = recipe.train_per_class
  source.data.validation_percent = 0
  source.model.use_mid_block = False
  source.model.use_top_block = False
  source.loss.branch_weights = ml_collections.ConfigDict({'top': 1.0})
  source.optim.learning_rate = recipe.learning_rate
  source.optim.new_layers_lr_multiplier = 1.0
  source.optim.warmup_epochs = recipe.warmup_epochs
  # One backbone for every fine-tuning run: not a function of their seeds
  # or their length.
  source.seed = 0
  source.num_train_steps = recipe.num_train_steps
  source.num_epochs = 0.0  # num_train_steps rules
  source.eval_every_epochs = 1e9  # the final step alone
  source.checkpoint.every_steps = max(1, recipe.num_train_steps // 4)
  return source


def _fingerprint(source: ml_collections.ConfigDict) -> str:
  """A hash of every field that changes the pretrained weights."""
  fields = source.to_dict()
  # Where the data lives, how the run is cut up and which devices run it
  # change nothing that is saved.
  fields['data'].pop('data_dir')
  # Fixed for the source task (above); left out, the backbones cached before
  # these knobs existed keep their names.
  for name in ('min_scale', 'occluders'):
    fields['data']['synthetic'].pop(name)
  for name in ('mesh', 'checkpoint', 'log_every_steps', 'eval_every_epochs'):
    fields.pop(name)
  for name in ('dtype', 'remat', 'remat_policy'):
    fields['model'].pop(name)
  text = json.dumps(fields, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def cache_dir(config: ml_collections.ConfigDict) -> str:
  """Where the source backbone of `config` is (or will be) kept."""
  source = source_config(config)
  root = synthetic.synthetic_builder(source.data.data_dir, **source.data.synthetic).data_dir_root
  name = f'{source.model.backbone}_w{source.model.backbone_width}_{_fingerprint(source)}'
  return str(storage.path(root) / CACHE_DIR / name)


def _save_backbone(workdir: str, path: str) -> None:
  """Writes the backbone of `workdir`'s latest checkpoint as a weights `.npz`."""
  trained = trained_model.load(workdir)
  flat = traverse_util.flatten_dict(jax.device_get(trained.variables), sep='/')
  arrays = {f'{kind}/{rest}': np.asarray(value) for key, value in flat.items()
            for kind, module, rest in [key.split('/', 2)] if module == optimizer.BACKBONE}
  weights = torchvision_weights.BackboneWeights(trained.config.model.backbone, arrays)
  partial = storage.path(f'{path}.partial')
  torchvision_weights.save_npz(str(partial), weights)
  partial.replace(path)  # a reader never sees half a file (object stores: one object)


def apply(config: ml_collections.ConfigDict) -> config_validation.ValidConfig:
  """`config` initialised from its source backbone, pretrained first if not cached.

  Validates `config` first, unless it is a ValidConfig already, and returns a
  ValidConfig, which the trainer takes as checked: `config` itself when
  `config.init.source_pretraining.enabled` is False; otherwise a copy with the
  request replaced by its result: `init.backbone_weights` names the `.npz` and
  `source_pretraining.enabled` is False, so the run's config.json says which
  file it started from.
  """
  config = config_validation.validated(config)
  if not config.init.source_pretraining.enabled:
    return config
  directory = cache_dir(config)
  path = storage.path(directory) / WEIGHTS_FILE
  if not path.exists():
    source = source_config(config)
    logging.info('Pretraining the %s backbone on the %d source classes (once; kept in %s).',
                 source.model.backbone, synthetic.SOURCE_CLASSES, directory)
    workdir = str(storage.path(directory) / 'run')
    results = trainer.train_and_evaluate(source, workdir)
    if 'stopped' in results:
      raise UserError(f'Pretraining on the source task was stopped: {results["stopped"]}')
    logging.info('Source backbone: top-1 %.2f%% on the source test split.',
                 100 * results['top1_combined'])
    if jax.process_index() == 0:
      _save_backbone(workdir, str(path))
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('clan_jax: source backbone saved')
  resolved = config.copy_and_resolve_references()
  resolved.init.backbone_weights = str(path)
  resolved.init.source_pretraining.enabled = False
  # Valid as `config` is, without a second check: validate allowed the request
  # only as the sole init source, and the file that replaces it exists.
  return config_validation.ValidConfig(resolved)

