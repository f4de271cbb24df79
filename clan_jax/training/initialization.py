"""Applies `config.init` to a fresh train state: backbone weights or a trained workdir.

Every key, shape and the backbone variant are checked before any leaf is
replaced, and every offending key is named (`torchvision_weights.check_arrays`).
"""
from typing import Any

from absl import logging
from flax import traverse_util
import jax
import ml_collections
import numpy as np

from clan_jax.models import torchvision_weights
from clan_jax.models.torchvision_weights import WeightsMismatchError
from clan_jax.training.train_state import TrainState
from clan_jax.workdir import trained_model

_BACKBONE = 'backbone'  # CLAN's name for its backbone


def _flatten(tree: Any) -> dict[str, Any]:
  return traverse_util.flatten_dict(tree, sep='/')


def _replace_variables(state: TrainState, arrays: dict[str, Any]) -> TrainState:
  """`state` with the leaves named by flat `arrays` keys replaced, in each leaf's
  dtype and sharding."""
  flat = _flatten({'params': state.params, 'batch_stats': state.batch_stats})
  for key, value in arrays.items():
    leaf = flat[key]
    flat[key] = jax.device_put(np.asarray(value).astype(leaf.dtype), leaf.sharding)
  variables = traverse_util.unflatten_dict(flat, sep='/')
  return state.replace(params=variables['params'], batch_stats=variables['batch_stats'])


def initialize(state: TrainState, config: ml_collections.ConfigDict) -> TrainState:
  """Applies `config.init` to a freshly initialised train state.

  config.init.backbone_weights: a converted `.npz` or a `.safetensors` / `.pth`
  ResNet, which replaces the params and batch_stats under 'backbone'.
  config.init.checkpoint: a train.py workdir whose latest checkpoint replaces
  all params and batch_stats (not the step or optimizer state).
  Raises before anything is replaced if the file's depth, keys or shapes do not
  match the model of `config.model`. Returns `state` unchanged if neither is set.
  """
  init = config.init  # config_validation allows at most one of the two
  if not (init.backbone_weights or init.checkpoint):
    return state
  expected = _flatten({'params': state.params, 'batch_stats': state.batch_stats})
  if init.backbone_weights:
    source = init.backbone_weights
    weights = torchvision_weights.load_weights(source)
    if weights.variant != config.model.backbone:
      raise WeightsMismatchError(
          f'{source} holds a {weights.variant} backbone, but '
          f'config.model.backbone={config.model.backbone!r}.')
    classifier = weights.spec.torchvision.classifier
    arrays = {}
    for key, value in weights.arrays.items():
      kind, rest = key.split('/', 1)
      if rest.split('/')[0] != classifier:  # CLAN has its own heads
        arrays[f'{kind}/{_BACKBONE}/{rest}'] = value
    expected = {k: v for k, v in expected.items() if k.split('/')[1] == _BACKBONE}
    target = (f'the {config.model.backbone} backbone of width '
              f'{config.model.backbone_width} (config.model)')
  else:
    source = init.checkpoint
    trained = trained_model.load(source)
    arrays = _flatten(jax.device_get(trained.variables))
    target = ('the model of config.model (config.init.checkpoint needs the same '
              'architecture and number of classes)')
    logging.info('config.init.checkpoint %s is at step %d.', source, trained.step)
  torchvision_weights.check_arrays(arrays, expected, source, target)
  state = _replace_variables(state, arrays)
  loaded_modules = {k.split('/')[1] for k in arrays}
  fresh = sorted(set(state.params) - loaded_modules)
  logging.info('Initialised %d arrays (%s) from %s; freshly initialised: %s.',
               len(arrays), ', '.join(sorted(loaded_modules)), source, fresh or 'nothing')
  return state
