"""CLAN models: registered backbones and blocks, and the four-branch classifier."""
import jax.numpy as jnp
import ml_collections

from clan_jax import config_rules as rules
from clan_jax.models import backbones, blocks, remat
from clan_jax.models.clan import CLAN, COMBINE_MODES, MERGE_MODES, branch_names
from clan_jax.models.resnet import ResNet, create_resnet
from clan_jax.user_errors import UserError

__all__ = ['CHECKED_AGAINST_REGISTRIES', 'CLAN', 'RULES', 'ResNet', 'block_rules', 'branch_names',
           'create_model', 'create_resnet', 'validate_model_config']

DTYPES = ('float32', 'bfloat16', 'float16')

# The fields of config.model whose values are checked one by one.
RULES = (
    rules.integer('backbone_width', 1),
    rules.boolean('zero_init_residual'),
    rules.boolean('use_mid_block'),
    rules.boolean('use_top_block'),
    rules.choice('refined_top_merge', MERGE_MODES),
    rules.choice('combine', COMBINE_MODES),
    rules.choice('dtype', DTYPES),
    rules.choice('remat', remat.MODES),
    rules.choice('remat_policy', remat.POLICIES),
    rules.choice('param_dtype', DTYPES),
)

# The fields of config.model that validate_model_config checks against the
# backbone's spec or the block registry instead.
CHECKED_AGAINST_REGISTRIES = ('backbone', 'backbone_options', 'top_stage', 'mid_level_taps',
                              'mid_block', 'top_block')


def block_rules() -> list[rules.Rule]:
  """The rules of every registered block's options, named from config.model."""
  return [rule for name, spec in blocks.registered().items()
          for rule in rules.prefixed(f'{name}.', spec.rules)]


def _choice(value, options, field):
  if value not in options:
    raise UserError(f'config.model.{field}={value!r} is not one of {tuple(options)}.')


def _backbone_options(m: ml_collections.ConfigDict) -> dict:
  """config.model.backbone_options, plus config.model.zero_init_residual for ResNets."""
  options = dict(m.backbone_options)
  if 'zero_init_residual' in backbones.get(m.backbone).options:
    options.setdefault('zero_init_residual', m.zero_init_residual)
  return options


def validate_model_config(m: ml_collections.ConfigDict) -> None:
  """Raises a UserError (a ValueError) naming the first bad field of `config.model`.

  Only the configured blocks' options groups are checked: a config may carry
  groups of blocks it does not use.
  """
  rules.check(RULES, m, 'model.')
  spec = backbones.get(m.backbone)
  for name in m.backbone_options:
    if name not in spec.options:
      raise UserError(f'config.model.backbone_options.{name} is not an option of '
                      f'{m.backbone}; its options: {spec.options}.')
  if m.zero_init_residual and 'zero_init_residual' not in spec.options:
    raise UserError(f'config.model.zero_init_residual=True needs a residual backbone; '
                    f'config.model.backbone={m.backbone!r} has none.')
  top_stage = m.top_stage or spec.top_stage
  _choice(top_stage, spec.stage_names, 'top_stage')
  for tap in m.mid_level_taps:
    _choice(tap, spec.mid_level_stages(top_stage), 'mid_level_taps')
  if m.use_top_block and not m.mid_level_taps:
    raise UserError('config.model.use_top_block needs at least one config.model.mid_level_taps.')
  for field, registry in (('mid_block', blocks.MID_LEVEL_BLOCKS),
                          ('top_block', blocks.TOP_LEVEL_BLOCKS)):
    name = m[field]
    _choice(name, registry, field)
    if name not in m:
      raise UserError(f'config.model.{field}={name!r} needs its options group '
                      f'config.model.{name} (see configs/base.py).')
    rules.check(registry[name].rules, m[name], f'model.{name}.')
  if remat.remats_stages(m.remat) and not spec.remat_stages:
    raise UserError(f'config.model.remat={m.remat!r} rematerialises backbone stages, which '
                    f"{m.backbone} cannot; use 'mid_blocks' or 'none'.")


def create_model(m: ml_collections.ConfigDict, num_classes: int) -> CLAN:
  """Builds the CLAN of `config.model` (see configs/base.py for the fields).

  The config is taken as valid: programs check it once, with the rest of the
  config, before they build anything (validate_model_config).
  """
  return CLAN(
      num_classes=num_classes,
      backbone=m.backbone,
      backbone_width=m.backbone_width,
      backbone_options=_backbone_options(m),
      top_stage=m.top_stage,
      mid_level_taps=tuple(m.mid_level_taps),
      use_mid_block=m.use_mid_block,
      use_top_block=m.use_top_block,
      mid_block=m.mid_block,
      top_block=m.top_block,
      mid_block_options=dict(m[m.mid_block]),
      top_block_options=dict(m[m.top_block]),
      refined_top_merge=m.refined_top_merge,
      combine=m.combine,
      remat=m.remat,
      remat_policy=m.remat_policy,
      dtype=jnp.dtype(m.dtype),
      param_dtype=jnp.dtype(m.param_dtype),
  )
