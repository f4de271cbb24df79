"""Model FLOPs by count (benchmarks/flops.py): by hand, against XLA, through scans."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from benchmarks import flops
from clan_jax.models import attention, backbones
from configs import base


def _xla_flops(fn, *args) -> float:
  analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
  return (analysis[0] if isinstance(analysis, (list, tuple)) else analysis)['flops']


def _resnet50_macs_by_hand(size: int) -> int:
  """torchvision's ResNet-50 without its classifier: out_h * out_w * k * k * c_in * c_out."""
  side = size // 2
  macs = side * side * 7 * 7 * 3 * 64  # the stem
  side //= 2  # max-pool
  channels = 64
  for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
    for block in range(blocks):
      stride = 2 if stage > 0 and block == 0 else 1
      out_side = side // stride
      macs += side * side * channels * width  # 1x1
      macs += out_side * out_side * 9 * width * width  # 3x3, strided ("v1.5")
      macs += out_side * out_side * width * 4 * width  # 1x1
      if block == 0:
        macs += out_side * out_side * channels * 4 * width  # downsample
      side, channels = out_side, 4 * width
  return macs


def test_resnet50_at_224_is_4_09_gmac_as_by_hand_and_torchvision():
  model = backbones.get('resnet50').create(width=64)
  images = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
  counted = flops.count_flops(lambda v, x: model.apply(v, x, train=False), variables, images)
  assert counted == 2 * 2 * _resnet50_macs_by_hand(224)
  assert counted / 2 / 2 == pytest.approx(4.09e9, rel=2e-3)  # torchvision's figure


class _NoPaddingNet(nn.Module):
  """Convs (strided, grouped, 1x1), an einsum and a dense layer, nothing elementwise."""

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(16, (3, 3), strides=2, padding='VALID', use_bias=False)(x)
    x = nn.Conv(32, (3, 3), padding='VALID', feature_group_count=4, use_bias=False)(x)
    x = nn.Conv(8, (1, 1), use_bias=False)(x)
    x = x.reshape(x.shape[0], -1, 8)
    return nn.Dense(10, use_bias=False)(jnp.einsum('bnc,bmc->bnm', x, x))


def test_count_equals_xla_where_xla_counts_the_same_work():
  # XLA also counts elementwise work and skips convolutions' padding taps:
  # a network with neither is where the two figures must agree exactly.
  model = _NoPaddingNet()
  images = jax.ShapeDtypeStruct((2, 33, 33, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)
  assert flops.count_flops(model.apply, variables, images) == _xla_flops(
      model.apply, variables, images)


def test_scans_count_their_trip_count_times_where_xla_counts_once():
  batch, positions, depth = 2, 256, 32
  q = jax.ShapeDtypeStruct((batch, positions, depth), jnp.float32)
  # Two products per query-key pair: q k^T and the weights times v.
  expected = 2 * 2 * batch * positions * positions * depth
  for implementation in ('reference', 'blockwise'):
    fn = functools.partial(attention.spatial_attention, implementation=implementation,
                           block_size=64)
    assert flops.count_flops(fn, q, q, q) == expected, implementation
  blockwise = functools.partial(attention.spatial_attention, implementation='blockwise',
                                block_size=64)
  assert _xla_flops(blockwise, q, q, q) < expected / 4  # 4x4 blocks, one counted


def test_train_step_flops_are_three_forwards_whatever_the_remat():
  config = base.get_model_config()
  config.backbone, config.backbone_width = 'resnet18', 8
  sizes = dict(image_size=64, batch_size=2, num_classes=5)
  forward = flops.forward_flops(config, **sizes)
  assert flops.train_step_flops(config, **sizes) == 3 * forward
  config.remat = 'all'
  assert flops.forward_flops(config, **sizes) == forward
  config.use_mid_block = config.use_top_block = False
  assert flops.forward_flops(config, **sizes) < forward
