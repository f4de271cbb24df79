"""Checks every field of a training config before any data is read or model built.

`validate(config)` raises a `UserError` naming the first bad field, its value
and what is allowed: `config.loss.label_smoothing=1.5 must be a number in [0, 1).`

Each field has one rule, next to the code that owns it (clan_jax/config_rules.py):
  FIELD_RULES: the fields of training, data and devices, one each.
  config.model: its rules and checks are the models' (models.validate_model_config),
    each block's options its block's (BlockSpec.rules).
  CROSS_CHECKS: functions of the whole config, for what involves several fields.
A field that a config lacks is reported too: a config written for an older
version of clan_jax must be updated, not silently defaulted.

A program validates its config once: `validate` returns a `ValidConfig`, frozen
so that it stays valid, and the library's entry points (the trainer, the
source pretraining) take one as checked (`validated`) and check anything else.
"""
from collections.abc import Callable

import ml_collections

from clan_jax import models, sharding
from clan_jax.config_rules import (Rule, boolean, check, choice, integer, is_number, number,
                                   optional_location, optional_path, text)
from clan_jax.data import input_pipeline, synthetic
from clan_jax.training import optimizer
from clan_jax.user_errors import UserError

NONFINITE_ACTIONS = ('stop', 'skip')


FIELD_RULES: list[Rule] = [
    integer('seed', 0, 2**31 - 1),
    # --- Data ---
    text('data.dataset'),
    optional_location('data.data_dir', "TFDS's default"),
    text('data.train_split'),
    text('data.eval_split'),
    integer('data.validation_percent', 0, 99),
    integer('data.synthetic.num_classes', 2, synthetic.MAX_CLASSES),
    integer('data.synthetic.train_per_class', 1),
    integer('data.synthetic.test_per_class', 1),
    integer('data.synthetic.image_size', 32),
    integer('data.synthetic.seed', 0),
    boolean('data.synthetic.source'),
    number('data.synthetic.min_scale', 0, synthetic.MAX_SCALE, low_open=True),
    integer('data.synthetic.occluders', 0),
    integer('data.resize_size', 1),
    integer('data.image_size', 1),
    boolean('data.cache'),
    boolean('data.crop_to_bbox'),
    integer('data.batch_size', 1),
    integer('data.eval_batch_size', 1),
    integer('data.prefetch_batches', 0),
    # --- Initialisation ---
    optional_path('init.backbone_weights', 'file'),
    optional_path('init.checkpoint', 'dir'),
    boolean('init.source_pretraining.enabled'),
    integer('init.source_pretraining.train_per_class', 1),
    integer('init.source_pretraining.num_train_steps', 1),
    number('init.source_pretraining.learning_rate', 0, low_open=True),
    number('init.source_pretraining.warmup_epochs', 0),
    # --- Loss and optimisation ---
    number('loss.label_smoothing', 0, 1, high_open=True),
    number('num_epochs', 0),
    integer('num_train_steps', 1, also=(-1,)),
    number('optim.learning_rate', 0, low_open=True),
    number('optim.new_layers_lr_multiplier', 0),
    number('optim.warmup_epochs', 0),
    number('optim.momentum', 0, 1, high_open=True),
    boolean('optim.nesterov'),
    number('optim.weight_decay', 0),
    choice('optim.weight_decay_mode', optimizer.WEIGHT_DECAY_MODES),
    number('optim.grad_clip_norm', 0),
    integer('optim.grad_accum_steps', 1),
    choice('on_nonfinite', NONFINITE_ACTIONS),
    integer('max_consecutive_skips', 1),
    # --- Devices ---
    choice('mesh.strategy', sharding.STRATEGIES),
    integer('mesh.data', 1, also=(-1,)),
    integer('mesh.fsdp', 1, also=(-1,)),
    integer('mesh.fsdp_min_size', 0),
    # --- Logging, evaluation, checkpoints ---
    integer('log_every_steps', 1),
    number('eval_every_epochs', 0, low_open=True),
    integer('checkpoint.every_steps', 1),
    integer('checkpoint.keep', 1),
    boolean('checkpoint.fallback'),
]


def _check_model(config: ml_collections.ConfigDict) -> None:
  models.validate_model_config(config.model)


def _check_branch_weights(config: ml_collections.ConfigDict) -> None:
  branches = models.branch_names(config.model.mid_level_taps, config.model.use_mid_block,
                                 config.model.use_top_block)
  # The default lists every branch a ResNet CLAN can have, at weight 1, so
  # that any of them can be set from the command line: only a weight set for
  # a branch this model lacks is an error.
  for name, weight in config.loss.branch_weights.items():
    if name not in branches and weight != 1.0:
      raise UserError(f'config.loss.branch_weights.{name}={weight} weighs a branch this model '
                      f'does not have; its branches are {list(branches)}.')
    if not is_number(weight) or weight < 0:
      raise UserError(f'config.loss.branch_weights.{name}={weight!r} must be a finite '
                      'number >= 0.')


def _check_length(config: ml_collections.ConfigDict) -> None:
  if config.num_train_steps == -1 and config.num_epochs <= 0:
    raise UserError(f'config.num_epochs={config.num_epochs} must be > 0 when '
                    'config.num_train_steps=-1 (set one of them).')


def _check_accumulation(config: ml_collections.ConfigDict) -> None:
  if config.data.batch_size % config.optim.grad_accum_steps:
    raise UserError(f'config.data.batch_size={config.data.batch_size} must be divisible by '
                    f'config.optim.grad_accum_steps={config.optim.grad_accum_steps}.')


def _check_init(config: ml_collections.ConfigDict) -> None:
  sources = [name for name, given in (
      ('backbone_weights', config.init.backbone_weights),
      ('checkpoint', config.init.checkpoint),
      ('source_pretraining.enabled', config.init.source_pretraining.enabled)) if given]
  if len(sources) > 1:
    raise UserError(f'Set at most one of config.init.backbone_weights, config.init.checkpoint '
                    f'and config.init.source_pretraining.enabled; this config sets '
                    f'{" and ".join("config.init." + s for s in sources)}.')
  if (config.init.source_pretraining.enabled
      and config.data.dataset != synthetic.NAME):
    raise UserError(f'config.init.source_pretraining.enabled=True pretrains on the synthetic '
                    f"source task: it needs config.data.dataset='{synthetic.NAME}', not "
                    f'{config.data.dataset!r}.')


# The fields that only CROSS_CHECKS check.
CHECKED_ACROSS_FIELDS = ('loss.branch_weights',)

# Run in order, after FIELD_RULES, so each may rely on its fields' types.
CROSS_CHECKS: list[Callable[[ml_collections.ConfigDict], None]] = [
    _check_model, _check_branch_weights, _check_length, input_pipeline.check_crop_size,
    input_pipeline.split_names, _check_accumulation, _check_init,
]


class ValidConfig(ml_collections.FrozenConfigDict):
  """A config that passed `validate`, frozen so that it cannot stop being valid.

  Its copy (`copy_and_resolve_references`) is a plain, mutable ConfigDict: a
  config derived from a valid one is validated anew.
  """

  def copy_and_resolve_references(self, visit_map=None) -> ml_collections.ConfigDict:
    del visit_map  # a frozen config holds no references
    # From the frozen fields: as_configdict() shares the groups of the config
    # that was validated, which its owner may have changed since.
    return ml_collections.ConfigDict(self.to_dict())


def validate(config: ml_collections.ConfigDict) -> ValidConfig:
  """`config`, frozen; raises a UserError naming its first field missing or not allowed."""
  check(FIELD_RULES, config)
  for check_config in CROSS_CHECKS:
    check_config(config)
  return ValidConfig(config)


def validated(config: ml_collections.ConfigDict) -> ValidConfig:
  """`config` if `validate` made it, else `validate(config)`: each config is checked once."""
  return config if isinstance(config, ValidConfig) else validate(config)
