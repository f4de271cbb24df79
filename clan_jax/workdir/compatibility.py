"""Configs written by older versions of clan_jax, read as today's.

Every difference between an older workdir's config.json and today's config is
here: the flat names from before the config was grouped, fields that were
renamed (whose old names the command line still takes), the model fields
added since (each block declares its own, models/block_spec.py), and values
that were renamed.
"""
from typing import Any

import ml_collections

from clan_jax.models import blocks

# Where the fields of the first, flat config.json went when the config was
# grouped: old top-level name -> its dotted path now. The programs also name
# the new path when such a flat name is given on the command line.
FLAT_FIELDS = {
    **{name: f'data.{name}' for name in (
        'dataset', 'data_dir', 'train_split', 'eval_split', 'validation_percent',
        'synthetic', 'resize_size', 'image_size', 'cache', 'crop_to_bbox', 'batch_size',
        'eval_batch_size', 'prefetch_batches')},
    **{name: f'loss.{name}' for name in ('branch_weights', 'label_smoothing')},
    **{name: f'optim.{name}' for name in (
        'learning_rate', 'new_layers_lr_multiplier', 'warmup_epochs', 'momentum',
        'nesterov', 'weight_decay', 'weight_decay_mode', 'grad_clip_norm',
        'grad_accum_steps')},
    'checkpoint_every_steps': 'checkpoint.every_steps',
    'keep_checkpoints': 'checkpoint.keep',
    'checkpoint_fallback': 'checkpoint.fallback',
}

# Fields renamed since: old dotted name -> today's. configs/base.py keeps each
# old name as an alias of today's field (a shared FieldReference), so that
# older command lines still run; what the programs check, write, log and
# compare has today's names only (`without_old_names`).
RENAMED_FIELDS = {
    # The ablation switches, named after CLCA and CLSA before any block could
    # be configured: they switch whichever mid_block / top_block names.
    'model.use_clca': 'model.use_mid_block',
    'model.use_clsa': 'model.use_top_block',
}

# Fields of config.model added after workdirs were first written, with the
# values that rebuild those workdirs' models; the blocks' own are in their
# specs (`added_model_fields` has all).
_ADDED_MODEL_FIELDS = {'backbone_options': {}, 'top_stage': None, 'mid_block': 'clca',
                       'top_block': 'clsa', 'remat': 'none',
                       'remat_policy': 'nothing_saveable'}
# {dotted field of config.model: {old value: its name now}}; the blocks' own
# are in their specs.
_RENAMED_MODEL_VALUES = {'remat': {'clca': 'mid_blocks'}}


def added_model_fields() -> dict[str, Any]:
  """{dotted field of config.model: the value an older workdir that lacks it had}."""
  return {**_ADDED_MODEL_FIELDS,
          **{f'{name}.{field}': value for name, spec in blocks.registered().items()
             for field, value in spec.added_fields.items()}}


def _renamed_model_values() -> dict[str, dict[Any, Any]]:
  return {**_RENAMED_MODEL_VALUES,
          **{f'{name}.{field}': renames for name, spec in blocks.registered().items()
             for field, renames in spec.renamed_values.items()}}


def upgrade(config: dict[str, Any]) -> ml_collections.ConfigDict:
  """An older workdir's config.json (as a dict) in today's groups, fields and values."""
  config = dict(config)
  for old, new in FLAT_FIELDS.items():
    if old in config:
      group, name = new.split('.')
      config.setdefault(group, {})[name] = config.pop(old)
  config = ml_collections.ConfigDict(config)
  for old, new in RENAMED_FIELDS.items():
    group, name = _group(config, old)
    if group is not None and name in group:
      new_group, new_name = _group(config, new)
      if new_name not in new_group:  # where a config has both, today's name holds the value
        new_group[new_name] = group[name]
  config = without_old_names(config)
  for field, default in added_model_fields().items():
    group, name = _group(config.model, field)
    if group is not None and name not in group:
      group[name] = default
  for field, renames in _renamed_model_values().items():
    group, name = _group(config.model, field)
    if group is not None and name in group and group[name] in renames:
      group[name] = renames[group[name]]
  return config


def without_old_names(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` without the old names of RENAMED_FIELDS: the config a
  program writes, logs and compares, each field once."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    for old in RENAMED_FIELDS:
      group, name = _group(config, old)
      if group is not None and name in group:
        del group[name]
  return config


def _group(config: ml_collections.ConfigDict, field: str
           ) -> tuple[ml_collections.ConfigDict | None, str]:
  """(the group holding dotted `field` of `config`, or None if the config lacks
  the group: that of a block the workdir does not use; the field's last name)."""
  *path, name = field.split('.')
  group = config
  for key in path:
    if key not in group:
      return None, name
    group = group[key]
  return group, name
