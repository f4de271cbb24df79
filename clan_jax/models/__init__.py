"""CLAN models: ResNet backbones, CLCA, CLSA and the four-branch classifier."""
import jax.numpy as jnp
import ml_collections

from clan_jax.models import attention, clsa, remat
from clan_jax.models.clan import CLAN, COMBINE_MODES, MERGE_MODES, MID_LEVEL_STAGES, branch_names
from clan_jax.models.clca import CLCA
from clan_jax.models.clsa import CLSA
from clan_jax.models.resnet import RESNET_VARIANTS, ResNet, create_resnet

__all__ = ['CLAN', 'CLCA', 'CLSA', 'ResNet', 'branch_names', 'create_model',
           'create_resnet', 'validate_model_config']


def _choice(value, options, field):
  if value not in options:
    raise ValueError(f'config.model.{field}={value!r} is not one of {tuple(options)}.')


def validate_model_config(model_config: ml_collections.ConfigDict) -> None:
  """Raises a ValueError naming the first bad field of `config.model`."""
  m = model_config
  _choice(m.backbone, RESNET_VARIANTS, 'backbone')
  for tap in m.mid_level_taps:
    _choice(tap, MID_LEVEL_STAGES, 'mid_level_taps')
  if m.use_clsa and not m.mid_level_taps:
    raise ValueError('config.model.use_clsa needs at least one config.model.mid_level_taps.')
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
  _choice(m.remat_policy, remat.POLICIES, 'remat_policy')
  for field in ('dtype', 'param_dtype'):
    _choice(m[field], ('float32', 'bfloat16', 'float16'), field)


def create_model(model_config: ml_collections.ConfigDict, num_classes: int) -> CLAN:
  """Builds the CLAN of `config.model` (see configs/default.py for the fields)."""
  validate_model_config(model_config)
  m = model_config
  return CLAN(
      num_classes=num_classes,
      backbone=m.backbone,
      backbone_width=m.backbone_width,
      zero_init_residual=m.zero_init_residual,
      mid_level_taps=tuple(m.mid_level_taps),
      use_clca=m.use_clca,
      use_clsa=m.use_clsa,
      clca_options=dict(m.clca),
      clsa_options=dict(m.clsa),
      refined_top_merge=m.refined_top_merge,
      combine=m.combine,
      remat=m.remat,
      remat_policy=m.remat_policy,
      dtype=jnp.dtype(m.dtype),
      param_dtype=jnp.dtype(m.param_dtype),
  )
