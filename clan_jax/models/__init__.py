"""CLAN models: registered backbones and blocks, CLCA, CLSA and the four-branch classifier."""
import jax.numpy as jnp
import ml_collections

from clan_jax.models import attention, backbones, blocks, clsa, remat
from clan_jax.models.clan import CLAN, COMBINE_MODES, MERGE_MODES, branch_names
from clan_jax.models.clca import CLCA
from clan_jax.models.clsa import CLSA
from clan_jax.models.resnet import ResNet, create_resnet

__all__ = ['CLAN', 'CLCA', 'CLSA', 'ResNet', 'branch_names', 'create_model',
           'create_resnet', 'validate_model_config', 'with_added_fields']


# Fields of config.model added after workdirs were first written, with the
# values that rebuild those workdirs' models.
# Dotted names; 'clsa.norm' is 'none' because the gate had no norm before.
ADDED_FIELD_DEFAULTS = {'backbone_options': {}, 'top_stage': None, 'mid_block': 'clca',
                        'top_block': 'clsa', 'clsa.norm': 'none', 'remat': 'none',
                        'remat_policy': 'nothing_saveable',
                        'clca.attention_block_size': 512}


def with_added_fields(model_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `model_config` (e.g. an older workdir's) with every added field present."""
  m = ml_collections.ConfigDict(model_config.to_dict())
  for field, default in ADDED_FIELD_DEFAULTS.items():
    *groups, name = field.split('.')
    parent = m
    for group in groups:
      parent = parent[group]
    if name not in parent:
      parent[name] = default
  # 'fused' was XLA's attention path; 'auto' is what replaced it.
  if m.clca.get('attention_impl') == 'fused':
    m.clca.attention_impl = 'auto'
  return m


def _choice(value, options, field):
  if value not in options:
    raise ValueError(f'config.model.{field}={value!r} is not one of {tuple(options)}.')


def _backbone_options(m: ml_collections.ConfigDict) -> dict:
  """config.model.backbone_options, plus config.model.zero_init_residual for ResNets."""
  spec = backbones.get(m.backbone)
  options = dict(m.backbone_options)
  for name in options:
    if name not in spec.options:
      raise ValueError(f'config.model.backbone_options.{name} is not an option of '
                       f'{m.backbone}; its options: {spec.options}.')
  if 'zero_init_residual' in spec.options:
    options.setdefault('zero_init_residual', m.zero_init_residual)
  elif m.zero_init_residual:
    raise ValueError(f'config.model.zero_init_residual=True needs a residual backbone; '
                     f'config.model.backbone={m.backbone!r} has none.')
  return options


def validate_model_config(model_config: ml_collections.ConfigDict) -> None:
  """Raises a ValueError naming the first bad field of `config.model`."""
  m = with_added_fields(model_config)
  spec = backbones.get(m.backbone)
  _backbone_options(m)
  top_stage = m.top_stage or spec.top_stage
  _choice(top_stage, spec.stage_names, 'top_stage')
  for tap in m.mid_level_taps:
    _choice(tap, spec.mid_level_stages(top_stage), 'mid_level_taps')
  if m.use_clsa and not m.mid_level_taps:
    raise ValueError('config.model.use_clsa needs at least one config.model.mid_level_taps.')
  for field, registry in (('mid_block', blocks.MID_LEVEL_BLOCKS),
                          ('top_block', blocks.TOP_LEVEL_BLOCKS)):
    name = m[field]
    _choice(name, registry, field)
    if name not in m:
      raise ValueError(f'config.model.{field}={name!r} needs its options group '
                       f'config.model.{name} (see configs/base.py).')
  _choice(m.clca.normalization, attention.NORMALIZATIONS, 'clca.normalization')
  _choice(m.clca.attention_impl, attention.IMPLEMENTATIONS, 'clca.attention_impl')
  _choice(m.clca.upsample, ('bilinear', 'nearest'), 'clca.upsample')
  if m.clca.attention_block_size < 8:
    raise ValueError(f'config.model.clca.attention_block_size='
                     f'{m.clca.attention_block_size} must be >= 8.')
  if not 0 < m.clca.inner_ratio <= 1:
    raise ValueError(f'config.model.clca.inner_ratio={m.clca.inner_ratio} must be in (0, 1].')
  _choice(m.clsa.downsample, clsa.DOWNSAMPLE_MODES, 'clsa.downsample')
  _choice(m.clsa.norm, clsa.NORM_MODES, 'clsa.norm')
  if m.clsa.kernel_size < 1 or m.clsa.kernel_size % 2 == 0:
    raise ValueError(f'config.model.clsa.kernel_size={m.clsa.kernel_size} must be odd.')
  _choice(m.refined_top_merge, MERGE_MODES, 'refined_top_merge')
  _choice(m.combine, COMBINE_MODES, 'combine')
  _choice(m.remat, remat.MODES, 'remat')
  if remat.remats_stages(m.remat) and not spec.remat_stages:
    raise ValueError(f'config.model.remat={m.remat!r} rematerialises backbone stages, which '
                     f"{m.backbone} cannot; use 'clca' or 'none'.")
  _choice(m.remat_policy, remat.POLICIES, 'remat_policy')
  for field in ('dtype', 'param_dtype'):
    _choice(m[field], ('float32', 'bfloat16', 'float16'), field)


def create_model(model_config: ml_collections.ConfigDict, num_classes: int) -> CLAN:
  """Builds the CLAN of `config.model` (see configs/base.py for the fields).

  Fields added since older workdirs were written (ADDED_FIELD_DEFAULTS) take
  their defaults when absent.
  """
  validate_model_config(model_config)
  m = with_added_fields(model_config)
  return CLAN(
      num_classes=num_classes,
      backbone=m.backbone,
      backbone_width=m.backbone_width,
      backbone_options=_backbone_options(m),
      top_stage=m.top_stage,
      mid_level_taps=tuple(m.mid_level_taps),
      use_clca=m.use_clca,
      use_clsa=m.use_clsa,
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
