"""A toy backbone, as a fork would add one: three strided conv stages, no torchvision weights.

This file, one registry line (backbones.BACKBONES['toynet'] = SPEC) and the
config that names it are all it takes; tests/test_plugins.py trains a CLAN
on it.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from clan_jax.models.backbones import BackboneSpec

STAGE_NAMES = ('stage1', 'stage2', 'stage3')


class ToyNet(nn.Module):
  """Images [B, H, W, 3] -> {'stage<i>': [B, H / 2^(i+1), W / 2^(i+1), width * 2^(i-1)]}."""

  width: int = 8
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
    features = {}
    x = nn.Conv(self.width, (3, 3), strides=2, dtype=self.dtype,
                param_dtype=self.param_dtype, name='stem')(x.astype(self.dtype))
    for i, name in enumerate(STAGE_NAMES):
      x = nn.Conv(self.width * 2**i, (3, 3), strides=2, dtype=self.dtype,
                  param_dtype=self.param_dtype, name=name)(x)
      x = nn.BatchNorm(use_running_average=not train, dtype=self.dtype,
                       param_dtype=self.param_dtype, name=f'{name}_bn')(x)
      features[name] = x = nn.relu(x)
    return features


SPEC = BackboneSpec(create=ToyNet, stage_names=STAGE_NAMES, top_stage='stage3',
                    taps={2: ('stage1', 'stage2')})
