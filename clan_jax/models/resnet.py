"""ResNet backbones in torchvision's layout, returning every stage's feature map.

The parameter tree mirrors torchvision's state-dict keys (`conv1`, `bn1`,
`layer1/0/conv2`, `layer2/0/downsample_conv`, ...), and padding is explicit
(torchvision pads 3x3 convs and the stem max-pool by 1 on every side, which
Flax's 'SAME' does not do on stride-2 layers), so torchvision or timm ImageNet
weights reproduce torchvision's outputs exactly.
"""
from collections.abc import Sequence
import re
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from clan_jax.models import pooling
from clan_jax.models import remat

Dtype = Any

STAGE_NAMES = ('layer1', 'layer2', 'layer3', 'layer4')

# He-normal over fan-out, as torchvision initialises its ResNet convs.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


class ResidualBlock(nn.Module):
  """What both block types share: their fields, layers and shortcut."""

  features: int
  strides: int = 1
  zero_init_residual: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  expansion: ClassVar[int] = 1

  @nn.nowrap
  def conv(self, features: int, kernel: int, strides: int = 1, *, name: str) -> nn.Conv:
    # torchvision pads a 3x3 conv by 1 on every side, whatever its stride.
    padding = ((1, 1), (1, 1)) if kernel == 3 else 'VALID'
    return nn.Conv(features, (kernel, kernel), strides, padding=padding, use_bias=False,
                   kernel_init=conv_kernel_init, dtype=self.dtype,
                   param_dtype=self.param_dtype, name=name)

  @nn.nowrap
  def norm(self, train: bool, *, name: str, last: bool = False) -> nn.BatchNorm:
    # Zero-initialising the last BN of each block starts every block as the
    # identity, which helps training from scratch (Goyal et al. 2017).
    zero = last and self.zero_init_residual
    return nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5,
        scale_init=nn.initializers.zeros if zero else nn.initializers.ones,
        dtype=self.dtype, param_dtype=self.param_dtype, name=name)

  @nn.nowrap
  def add_shortcut(self, x: jax.Array, y: jax.Array, train: bool) -> jax.Array:
    """relu(shortcut(x) + y), projecting x when its shape differs from y's."""
    if x.shape != y.shape:
      x = self.conv(y.shape[-1], 1, self.strides, name='downsample_conv')(x)
      x = self.norm(train, name='downsample_bn')(x)
    return nn.relu(x + y)


class BasicBlock(ResidualBlock):
  """Two 3x3 convs (ResNet-18/34). Maps [B, H, W, C_in] -> [B, H/s, W/s, C]."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = self.conv(self.features, 3, self.strides, name='conv1')(x)
    y = nn.relu(self.norm(train, name='bn1')(y))
    y = self.conv(self.features, 3, name='conv2')(y)
    y = self.norm(train, name='bn2', last=True)(y)
    return self.add_shortcut(x, y, train)


class Bottleneck(ResidualBlock):
  """1x1 -> 3x3 (strided, as torchvision "v1.5") -> 1x1 x4 (ResNet-50/101/152).

  Maps [B, H, W, C_in] -> [B, H/s, W/s, 4 * features].
  """

  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = self.conv(self.features, 1, name='conv1')(x)
    y = nn.relu(self.norm(train, name='bn1')(y))
    y = self.conv(self.features, 3, self.strides, name='conv2')(y)
    y = nn.relu(self.norm(train, name='bn2')(y))
    y = self.conv(self.features * self.expansion, 1, name='conv3')(y)
    y = self.norm(train, name='bn3', last=True)(y)
    return self.add_shortcut(x, y, train)


class ResNetStage(nn.Module):
  """`num_blocks` residual blocks, the first one strided; named '0', '1', ...

  Maps [B, H, W, C_in] -> [B, H/s, W/s, expansion * features].
  """

  block_cls: type[nn.Module]
  num_blocks: int
  features: int
  strides: int
  zero_init_residual: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for j in range(self.num_blocks):
      x = self.block_cls(
          features=self.features, strides=self.strides if j == 0 else 1,
          zero_init_residual=self.zero_init_residual, dtype=self.dtype,
          param_dtype=self.param_dtype, name=str(j))(x, train)
    return x


class ResNet(nn.Module):
  """A ResNet that returns the feature map of the stem and of every stage.

  Attributes:
    stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
    block_cls: BasicBlock or Bottleneck.
    width: channels of the stem and of the first stage's 3x3 convs (64 in
      torchvision); stage i has width * 2**i.
    num_classes: if set, also returns the logits of torchvision's `fc` head
      (used to check parity with torchvision); CLAN uses its own heads.
    remat_policy: a `jax.checkpoint_policies` name to rematerialise each stage
      with (clan_jax/models/remat.py); None: no rematerialisation.
  """

  stage_sizes: Sequence[int]
  block_cls: type[nn.Module]
  width: int = 64
  zero_init_residual: bool = False
  num_classes: int | None = None
  remat_policy: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
    """Maps images [B, H, W, 3] to feature maps.

    Returns:
      {'stem': [B, H/4, W/4, width], 'layer1': [B, H/4, W/4, e*width],
       'layer2': [B, H/8, W/8, 2*e*width], 'layer3': [B, H/16, W/16, 4*e*width],
       'layer4': [B, H/32, W/32, 8*e*width]} with e the block's expansion
      (1 or 4), plus 'logits' [B, num_classes] when num_classes is set.
    """
    x = x.astype(self.dtype)
    x = nn.Conv(self.width, (7, 7), (2, 2), padding=((3, 3), (3, 3)),
                use_bias=False, kernel_init=conv_kernel_init, dtype=self.dtype,
                param_dtype=self.param_dtype, name='conv1')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     dtype=self.dtype, param_dtype=self.param_dtype, name='bn1')(x)
    x = nn.relu(x)
    x = pooling.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    features = {'stem': x}
    stage_cls = (ResNetStage if self.remat_policy is None
                 else remat.wrap(ResNetStage, self.remat_policy, static_argnums=(2,)))
    for i, (stage_name, num_blocks) in enumerate(zip(STAGE_NAMES, self.stage_sizes)):
      x = stage_cls(
          self.block_cls, num_blocks, features=self.width * 2**i,
          strides=1 if i == 0 else 2,
          zero_init_residual=self.zero_init_residual, dtype=self.dtype,
          param_dtype=self.param_dtype, name=stage_name)(x, train)
      features[stage_name] = x
    if self.num_classes is not None:
      pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
      features['logits'] = nn.Dense(
          self.num_classes, dtype=jnp.float32, param_dtype=self.param_dtype,
          name='fc')(pooled)
    return features


RESNET_VARIANTS = {
    'resnet18': ((2, 2, 2, 2), BasicBlock),
    'resnet34': ((3, 4, 6, 3), BasicBlock),
    'resnet50': ((3, 4, 6, 3), Bottleneck),
    'resnet101': ((3, 4, 23, 3), Bottleneck),
    'resnet152': ((3, 8, 36, 3), Bottleneck),
}


def create_resnet(variant: str, **kwargs) -> ResNet:
  """ResNet by torchvision name ('resnet18' ... 'resnet152')."""
  if variant not in RESNET_VARIANTS:
    raise ValueError(f'Unknown backbone {variant!r} (config.model.backbone); '
                     f'expected one of {sorted(RESNET_VARIANTS)}.')
  stage_sizes, block_cls = RESNET_VARIANTS[variant]
  return ResNet(stage_sizes=stage_sizes, block_cls=block_cls, **kwargs)


# --- torchvision state dicts (see clan_jax/models/torchvision_weights.py) ------------------------------


def torchvision_module_path(modules: list[str]) -> list[str]:
  """torchvision's `downsample.0` / `.1` (an nn.Sequential) are our downsample_conv / _bn."""
  if modules[-2:] in (['downsample', '0'], ['downsample', '1']):
    return modules[:-2] + ['downsample_conv' if modules[-1] == '0' else 'downsample_bn']
  return modules


def torchvision_variant(keys: Sequence[str]) -> str:
  """The RESNET_VARIANTS name of flat Flax keys: block type from conv3, depth from block counts.

  Raises a ValueError whose message is a predicate ('is no torchvision ResNet: ...').
  """
  blocks = [set() for _ in STAGE_NAMES]
  for key in keys:
    match = re.match(r'params/layer(\d)/(\d+)/', key)
    if match and 1 <= int(match[1]) <= len(STAGE_NAMES):
      blocks[int(match[1]) - 1].add(int(match[2]))
  stage_sizes = tuple(len(b) for b in blocks)
  bottleneck = any(re.match(r'params/layer\d/\d+/conv3/', key) for key in keys)
  for name, (sizes, block_cls) in RESNET_VARIANTS.items():
    if tuple(sizes) == stage_sizes and (block_cls is Bottleneck) == bottleneck:
      return name
  raise ValueError(
      f'is no torchvision ResNet: {stage_sizes} '
      f'{"bottleneck" if bottleneck else "basic"} blocks per stage; known: '
      + ', '.join(f'{n} {tuple(s)} {c.__name__}' for n, (s, c) in RESNET_VARIANTS.items())
      + '.')


def torchvision_options(arrays: dict[str, Any]) -> dict[str, Any]:
  """`width` and `num_classes` (None without `fc`) of converted flat Flax arrays."""
  if 'params/conv1/kernel' not in arrays:
    raise ValueError('has no stem conv (missing keys: conv1.weight).')
  fc_bias = arrays.get('params/fc/bias')
  return {'width': arrays['params/conv1/kernel'].shape[-1],
          'num_classes': None if fc_bias is None else fc_bias.shape[0]}

