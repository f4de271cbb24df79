"""Cross-layer Context Attention (CLCA), Figure 2 of the paper."""
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from clan_jax import config_rules as rules
from clan_jax.models import attention
from clan_jax.models.block_spec import BlockSpec

Dtype = Any


class CLCA(nn.Module):
  """Refines a mid-level map L_s with context from the top-level map L_N.

      f = W_g(Up(L_N)) + W_l(L_s)
      L̂_s = L_s + BN(W_y(normalize(W_θ(f) W_φ(f)^T) W_k(L_s)))

  a non-local block whose queries and keys come from the fused top+mid map and
  whose values come from L_s alone. W_θ(f) and W_φ(f), [B, H_s, W_s, inner],
  are sown as intermediates/query and intermediates/key for attention maps.

  Attributes:
    inner_ratio: inner width as a fraction of L_s's channels (choice: 1/2).
    normalization: 'softmax' over keys or 'mean' (choice: softmax).
    scaled: 1/sqrt(d) on the logits (choice: no, as non-local blocks).
    upsample: 'bilinear' or 'nearest' for Up (choice: bilinear).
    attention_impl: 'auto', 'blockwise' or 'reference', see
      clan_jax/models/attention.py for what each does on each platform.
    attention_block_size: most positions per block of the blockwise path.
    zero_init: start the BatchNorm after W_y with scale 0, so that the block
      is the identity at initialisation and does not disturb a pretrained
      backbone (choice: yes).
  """

  inner_ratio: float = 0.5
  normalization: str = 'softmax'
  scaled: bool = False
  upsample: str = 'bilinear'
  attention_impl: str = 'auto'
  attention_block_size: int = attention.DEFAULT_BLOCK_SIZE
  zero_init: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, mid: jax.Array, top: jax.Array, train: bool) -> jax.Array:
    """Maps L_s [B, H_s, W_s, C_s] and L_N [B, H_g, W_g, C_g] to L̂_s [B, H_s, W_s, C_s]."""
    batch, height, width, channels = mid.shape
    inner = max(1, int(round(channels * self.inner_ratio)))
    conv1x1 = functools.partial(nn.Conv, inner, (1, 1), dtype=self.dtype,
                                param_dtype=self.param_dtype)
    # W_g before Up: both are linear per position (interpolation weights sum
    # to one, so the bias commutes too), and this order upsamples `inner`
    # channels instead of C_g (2048 on ResNet-50).
    g = conv1x1(name='w_g')(top)
    g = jax.image.resize(g, (batch, height, width, inner), method=self.upsample)
    f = g + conv1x1(name='w_l')(mid)
    theta = conv1x1(name='w_theta')(f)
    phi = conv1x1(name='w_phi')(f)
    # For attention maps (clan_jax/inference/attention_maps.py): the affinity of any
    # query position follows from these; no-ops unless 'intermediates' is mutable.
    self.sow('intermediates', 'query', theta)
    self.sow('intermediates', 'key', phi)
    theta = theta.reshape(batch, height * width, inner)
    phi = phi.reshape(batch, height * width, inner)
    value = conv1x1(name='w_k')(mid).reshape(batch, height * width, inner)
    y = attention.spatial_attention(
        theta, phi, value, normalization=self.normalization, scaled=self.scaled,
        implementation=self.attention_impl, block_size=self.attention_block_size)
    y = nn.Conv(channels, (1, 1), dtype=self.dtype, param_dtype=self.param_dtype,
                name='w_y')(y.reshape(batch, height, width, inner))
    y = nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5,
        scale_init=nn.initializers.zeros if self.zero_init else nn.initializers.ones,
        dtype=self.dtype, param_dtype=self.param_dtype, name='bn_y')(y)
    return mid + y


def _diagnostics(params, sown):
  """The mean |scale| of the output BatchNorm: 0 at init, when the block is the identity."""
  del sown
  return {'bn_scale': jnp.mean(jnp.abs(params['bn_y']['scale']))}


def _attention_map(sown, options, fractions):
  """Each image's query row of normalize(W_θ(f) W_φ(f)^T), float32 [B, H_s, W_s]."""
  (query,) = sown['query']  # [B, H_s, W_s, D]
  (key,) = sown['key']
  batch, height, width, depth = key.shape
  cells = [(min(int(fy * height), height - 1), min(int(fx * width), width - 1))
           for fx, fy in fractions]
  queries = np.stack([query[i, row, col] for i, (row, col) in enumerate(cells)])
  weights = attention.affinity(
      queries[:, None], key.reshape(batch, height * width, depth),
      normalization=options['normalization'], scaled=options['scaled'])
  return np.asarray(weights).reshape(batch, height, width), cells


SPEC = BlockSpec(
    module=CLCA,
    rules=(
        rules.choice('normalization', attention.NORMALIZATIONS),
        rules.number('inner_ratio', 0, 1, low_open=True),
        rules.choice('upsample', ('bilinear', 'nearest')),
        rules.boolean('scaled'),
        rules.choice('attention_impl', attention.IMPLEMENTATIONS),
        rules.integer('attention_block_size', 8),
        rules.boolean('zero_init'),
    ),
    diagnostic_names=('bn_scale',),
    diagnostics=_diagnostics,
    attention_map=_attention_map,
    compute_only_fields=('attention_impl', 'attention_block_size'),
    added_fields={'attention_block_size': attention.DEFAULT_BLOCK_SIZE},
    # 'fused' was XLA's attention path; 'auto' is what replaced it.
    renamed_values={'attention_impl': {'fused': 'auto'}},
)
