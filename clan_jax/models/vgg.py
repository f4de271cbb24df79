"""VGG backbones in torchvision's layout, returning the map of every conv block.

The parameter tree mirrors torchvision's state-dict keys: `features/N` is the
N-th layer of torchvision's `features` nn.Sequential (convs, and BatchNorms in
the `_bn` variants; ReLUs and max-pools take an index but hold nothing), and
`classifier/0`, `/3`, `/6` are its three linear layers. With the classifier,
an adaptive average pool to 7x7 precedes it, as in torchvision.

Which maps CLAN uses is not in the paper. The stage maps are the five conv
blocks' outputs, 'block1' ... 'block5', taken after each block's max-pool
(`stage_output='pooled'`, choice: strides 2, 4, 8, 16, 32, so block3-block5
match ResNet's layer2-layer4) or before it (`'conv'`: the last ReLU of each
block, conv1_2 ... conv5_3, strides 1 ... 16).
"""
from collections.abc import Sequence
import functools
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from clan_jax.models import pooling

Dtype = Any

STAGE_NAMES = ('block1', 'block2', 'block3', 'block4', 'block5')
STAGE_OUTPUTS = ('pooled', 'conv')
# Convs per block by depth (torchvision's configurations A, B, D, E).
VGG_DEPTHS = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3),
              19: (2, 2, 4, 4, 4)}
# Block i has width * _CHANNEL_MULTIPLIERS[i] channels (64 ... 512 in torchvision).
_CHANNEL_MULTIPLIERS = (1, 2, 4, 8, 8)
_CLASSIFIER_POOL = (7, 7)

# torchvision's VGG initialisation: He-normal over fan-out, zero biases, N(0, 0.01) linears.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
dense_kernel_init = nn.initializers.normal(0.01)


class VGGFeatures(nn.Module):
  """torchvision's `features`: 3x3 convs (+ BatchNorm) + ReLU, a 2x2 max-pool per block.

  Layers are named by their index in torchvision's nn.Sequential.
  """

  convs_per_block: Sequence[int]
  width: int = 64
  batch_norm: bool = False
  stage_output: str = 'pooled'
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[dict[str, jax.Array], jax.Array]:
    """Maps [B, H, W, 3] to ({'block1' ... 'block5': stage maps}, the last pooled map).

    The pooled map of block i is [B, H/2^i, W/2^i, C_i] (floored, as
    torchvision's max-pool), C_i = width * (1, 2, 4, 8, 8)[i-1].
    """
    if self.stage_output not in STAGE_OUTPUTS:
      raise ValueError(f'config.model.backbone_options.stage_output={self.stage_output!r} '
                       f'is not one of {STAGE_OUTPUTS}.')
    index = 0  # the position in torchvision's nn.Sequential
    features = {}
    for stage, num_convs, multiplier in zip(STAGE_NAMES, self.convs_per_block,
                                            _CHANNEL_MULTIPLIERS):
      for _ in range(num_convs):
        x = nn.Conv(self.width * multiplier, (3, 3), padding=((1, 1), (1, 1)),
                    kernel_init=conv_kernel_init, dtype=self.dtype,
                    param_dtype=self.param_dtype, name=str(index))(x)
        index += 1
        if self.batch_norm:
          x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                           dtype=self.dtype, param_dtype=self.param_dtype,
                           name=str(index))(x)
          index += 1
        x = nn.relu(x)
        index += 1
      conv_map = x
      x = pooling.max_pool(x, (2, 2), strides=(2, 2))
      index += 1
      features[stage] = x if self.stage_output == 'pooled' else conv_map
    return features, x


def adaptive_avg_pool(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """torch's AdaptiveAvgPool2d: [B, H, W, C] -> [B, size[0], size[1], C].

  Output cell i averages rows floor(i H / h) to ceil((i + 1) H / h) - 1, so
  cells overlap or repeat when H is not a multiple of h.
  """
  def weights(length: int, out: int) -> np.ndarray:
    matrix = np.zeros((out, length), np.float32)
    for i in range(out):
      start, end = (i * length) // out, -((-(i + 1) * length) // out)
      matrix[i, start:end] = 1.0 / (end - start)
    return matrix
  rows, cols = weights(x.shape[1], size[0]), weights(x.shape[2], size[1])
  return jnp.einsum('ih,jw,bhwc->bijc', rows, cols, x,
                    precision=jax.lax.Precision.HIGHEST).astype(x.dtype)


class VGGClassifier(nn.Module):
  """torchvision's `classifier`: Linear-ReLU-Dropout twice, then Linear (indices 0, 3, 6)."""

  num_classes: int
  hidden: int = 4096
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Maps [B, 7, 7, C] to logits [B, num_classes] (float32); dropout needs a 'dropout' rng."""
    # Flattened in NHWC order; the converter reorders torchvision's NCHW columns.
    x = x.reshape(x.shape[0], -1)
    dense = functools.partial(nn.Dense, kernel_init=dense_kernel_init,
                              param_dtype=self.param_dtype)
    for index in (0, 3):
      x = nn.relu(dense(self.hidden, dtype=self.dtype, name=str(index))(x))
      x = nn.Dropout(0.5, deterministic=not train)(x)
    return dense(self.num_classes, dtype=jnp.float32, name='6')(x)


class VGG(nn.Module):
  """A VGG that returns the map of every conv block.

  Attributes:
    convs_per_block: e.g. (2, 2, 3, 3, 3) for VGG-16.
    batch_norm: a BatchNorm after every conv (torchvision's `vgg16_bn`).
    width: channels of the first block (64 in torchvision); block i has
      width * (1, 2, 4, 8, 8)[i-1].
    stage_output: 'pooled' (choice) or 'conv', see the module docstring.
    num_classes: if set, also returns the logits of torchvision's classifier
      (used to check parity with torchvision); CLAN uses its own heads.
    classifier_width: the classifier's hidden width (4096 in torchvision).
  """

  convs_per_block: Sequence[int]
  batch_norm: bool = False
  width: int = 64
  stage_output: str = 'pooled'
  num_classes: int | None = None
  classifier_width: int = 4096
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
    """Maps images [B, H, W, 3] to {'block1' ... 'block5': [B, h, w, C]} (see VGGFeatures),
    plus 'logits' [B, num_classes] when num_classes is set."""
    features, pooled = VGGFeatures(
        self.convs_per_block, self.width, self.batch_norm, self.stage_output,
        dtype=self.dtype, param_dtype=self.param_dtype, name='features')(
            x.astype(self.dtype), train)
    if self.num_classes is not None:
      features['logits'] = VGGClassifier(
          self.num_classes, self.classifier_width, dtype=self.dtype,
          param_dtype=self.param_dtype, name='classifier')(
              adaptive_avg_pool(pooled, _CLASSIFIER_POOL), train)
    return features


def variant_name(depth: int, batch_norm: bool) -> str:
  """torchvision's name: 'vgg16', 'vgg16_bn', ..."""
  return f'vgg{depth}{"_bn" if batch_norm else ""}'


# --- torchvision state dicts (see clan_jax/models/torchvision_weights.py) ------------------------------


# Every key of a torchvision VGG: a layer of `features` or `classifier` by its
# index, then its array. ConvNeXt, EfficientNet and MobileNet state dicts also
# begin with 'features.', but nest deeper ('features.1.0.block.0.weight').
_TORCHVISION_KEY = re.compile(
    r'(features|classifier)\.\d+\.(weight|bias|running_mean|running_var|num_batches_tracked)')


def torchvision_owns(keys: Sequence[str]) -> bool:
  """Whether torch state dict keys (without 'module.') are a torchvision VGG's."""
  return bool(keys) and all(_TORCHVISION_KEY.fullmatch(key) for key in keys)


def torchvision_variant(keys: Sequence[str]) -> str:
  """The variant of flat Flax keys: depth from the number of convs, `_bn` from BatchNorms.

  Raises a ValueError whose message is a predicate ('is no torchvision VGG: ...').
  """
  convs = {m[1] for key in keys if (m := re.match(r'params/features/(\d+)/kernel$', key))}
  batch_norm = any(key.startswith('batch_stats/features/') for key in keys)
  for depth, blocks in VGG_DEPTHS.items():
    if sum(blocks) == len(convs):
      return variant_name(depth, batch_norm)
  raise ValueError(f'is no torchvision VGG: {len(convs)} convs in `features`; known: '
                   + ', '.join(f'vgg{d} {sum(b)}' for d, b in VGG_DEPTHS.items()) + '.')


def torchvision_options(arrays: dict[str, Any]) -> dict[str, Any]:
  """`width`, and `num_classes` / `classifier_width` (None without a classifier)."""
  if 'params/features/0/kernel' not in arrays:
    raise ValueError('has no first conv (missing keys: features.0.weight).')
  last = arrays.get('params/classifier/6/bias')
  hidden = arrays.get('params/classifier/0/bias')
  options = {'width': arrays['params/features/0/kernel'].shape[-1],
             'num_classes': None if last is None else last.shape[0]}
  if last is not None and hidden is not None:
    options['classifier_width'] = hidden.shape[0]
  return options


def torchvision_to_flax(key: str, value: np.ndarray) -> np.ndarray:
  """classifier.0's input columns from torchvision's NCHW flattening to NHWC.

  Other arrays pass through (the generic layout change follows).
  """
  if key != 'params/classifier/0/kernel':
    return value
  out_features, inputs = value.shape
  height, width = _CLASSIFIER_POOL
  if inputs % (height * width):
    return value  # no VGG classifier: the shape check names it
  channels = inputs // (height * width)
  return (value.reshape(out_features, channels, height, width).transpose(0, 2, 3, 1)
          .reshape(out_features, inputs))
