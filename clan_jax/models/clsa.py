"""Cross-layer Spatial Attention (CLSA), Figure 3 of the paper."""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from clan_jax import config_rules as rules
from clan_jax.models import pooling
from clan_jax.models.block_spec import BlockSpec

Dtype = Any

DOWNSAMPLE_MODES = ('avg', 'max', 'bilinear')
NORM_MODES = ('batchnorm', 'none')


class CLSA(nn.Module):
  """Re-weights the top-level map L_N with a spatial map from a refined mid map.

      M_s = sigmoid(BN(conv([max_c L̂_s, mean_c L̂_s])))  [B, H_s, W_s, 1]
      out = L_N * R(M_s)   (or L_N + L_N * R(M_s) when residual)

  The attention map M_s is sown as intermediates/attention for visualisation.

  Attributes:
    kernel_size: of the conv producing M_s (choice: 7).
    downsample: R, from H_s x W_s to H_g x W_g: 'avg' pooling (choice; needs
      H_s divisible by H_g), 'max' pooling, or 'bilinear' (antialiased).
    residual: add L_N back (choice: no).
    norm: 'batchnorm' on the gate's logits (choice, as CBAM's spatial gate) or
      'none'. The descriptor's scale is that of L̂_s, which CLCA changes as it
      trains; without a norm the sigmoid saturates and the gate stops learning
      (docs/ablation_study.md).
  """

  kernel_size: int = 7
  downsample: str = 'avg'
  residual: bool = False
  norm: str = 'batchnorm'
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, mid: jax.Array, top: jax.Array, train: bool) -> jax.Array:
    """Maps L̂_s [B, H_s, W_s, C_s] and L_N [B, H_g, W_g, C_g] to [B, H_g, W_g, C_g]."""
    descriptor = jnp.concatenate(
        [jnp.max(mid, axis=-1, keepdims=True),
         jnp.mean(mid, axis=-1, keepdims=True, dtype=jnp.float32).astype(mid.dtype)],
        axis=-1)
    pad = self.kernel_size // 2
    normalized = self.norm == 'batchnorm'
    logits = nn.Conv(1, (self.kernel_size, self.kernel_size),
                     padding=((pad, pad), (pad, pad)), use_bias=not normalized,
                     dtype=self.dtype, param_dtype=self.param_dtype,
                     name='conv')(descriptor)
    if normalized:
      logits = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                            dtype=self.dtype, param_dtype=self.param_dtype,
                            name='bn')(logits)
    attention = nn.sigmoid(logits)
    self.sow('intermediates', 'attention', attention)
    weights = downsample_to(attention, top.shape[1:3], self.downsample)
    out = top * weights.astype(top.dtype)
    return top + out if self.residual else out


def downsample_to(x: jax.Array, size: tuple[int, int], mode: str) -> jax.Array:
  """Resizes [B, H, W, C] down to [B, size[0], size[1], C]."""
  if mode == 'bilinear':
    return jax.image.resize(x, (x.shape[0], *size, x.shape[-1]), 'bilinear')
  (height, width), (out_height, out_width) = x.shape[1:3], size
  if height % out_height or width % out_width:
    raise ValueError(
        f"CLSA downsample '{mode}' needs the mid-level map ({height}x{width}) to "
        f'be a multiple of the top-level map ({out_height}x{out_width}): use an '
        'image size divisible by 32 (config.data.image_size) or '
        "config.model.clsa.downsample='bilinear'.")
  window = (height // out_height, width // out_width)
  if mode == 'avg':
    return nn.avg_pool(x, window, strides=window)
  return pooling.max_pool(x, window, strides=window)


def _diagnostics(params, sown):
  """The mean and spread of the gate M_s; a saturated gate has its std near 0.5."""
  del params
  gate = sown['attention'][0].astype(jnp.float32)
  return {'gate_mean': jnp.mean(gate), 'gate_std': jnp.std(gate)}


def _attention_map(sown, options, fractions):
  """M_s, float32 [B, H_s, W_s]; it has no query."""
  del options, fractions
  (gate,) = sown['attention']
  return np.asarray(gate[..., 0], np.float32), None


SPEC = BlockSpec(
    module=CLSA,
    rules=(
        rules.Rule('kernel_size', lambda v: rules.is_int(v) and v >= 1 and v % 2 == 1,
                   'an odd integer >= 1'),
        rules.choice('downsample', DOWNSAMPLE_MODES),
        rules.boolean('residual'),
        rules.choice('norm', NORM_MODES),
    ),
    diagnostic_names=('gate_mean', 'gate_std'),
    diagnostics=_diagnostics,
    attention_map=_attention_map,
    map_title='CLSA M_s',
    # The gate had no norm before 'norm' was added.
    added_fields={'norm': 'none'},
)
