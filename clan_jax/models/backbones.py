"""The backbone registry: all that CLAN and the weight converter know of a backbone.

A backbone is a Flax module mapping images [B, H, W, 3] to its stage maps
{stage name: [B, h, w, C]} (plus 'logits' [B, K] when built with
`num_classes`, which only parity checks against torchvision use). CLAN takes
its top-level map L_N and its mid-level maps L_s from these by name.

Adding a backbone: a model file beside this one (the module, and how its
torchvision state dict maps onto its parameter tree), then one entry in
`BACKBONES`. Nothing else changes: `CLAN`, config validation and
`clan_jax.models.torchvision_weights` read everything from the entry.
"""
from collections.abc import Callable, Mapping, Sequence
import dataclasses
import functools
from typing import Any

import flax.linen as nn

from clan_jax.models import resnet, vgg
from clan_jax.user_errors import UserError


@dataclasses.dataclass(frozen=True)
class TorchvisionLayout:
  """How a backbone family's torchvision state dict maps onto its Flax tree.

  Generic part (clan_jax/models/torchvision_weights.py): torch key 'a.b.c.leaf' becomes the
  Flax module path a/b/c with leaf weight -> kernel (conv OIHW -> HWIO, linear
  transposed) or BatchNorm scale, bias -> bias, running_mean/var ->
  batch_stats mean/var. The family supplies the rest.

  Attributes:
    family: its name in messages ('ResNet').
    owns: whether a state dict's keys (without 'module.') are this family's.
    module_path: renames torch module path parts to the Flax tree's.
    variant: flat Flax keys -> the registry name; raises a ValueError whose
      message is a predicate ('is no torchvision ResNet: ...').
    options: flat Flax arrays -> keyword arguments of the backbone's `create`
      that the file fixes (width, num_classes, ...); raises like `variant`.
    classifier: the top-level module of torchvision's classifier, dropped
      when the weights initialise CLAN (which has its own heads).
    to_flax: (Flax key, array in torch layout) -> array in Flax layout, for
      arrays the generic layout change does not fit; None for none.
  """

  family: str
  owns: Callable[[Sequence[str]], bool]
  module_path: Callable[[list[str]], list[str]]
  variant: Callable[[Sequence[str]], str]
  options: Callable[[Mapping[str, Any]], dict[str, Any]]
  classifier: str
  to_flax: Callable[[str, Any], Any] | None = None


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
  """One registered backbone.

  Attributes:
    create: builds the module; takes width, num_classes (None: no classifier),
      dtype, param_dtype, name and the keyword arguments named in `options`.
    stage_names: the keys of its stage maps, input side first.
    top_stage: the default top-level map L_N (config.model.top_stage overrides).
    taps: default mid-level taps by number of scales: {2: ..., 3: ...}.
    options: names allowed in config.model.backbone_options.
    torchvision: how its torchvision weights convert; None: it has none.
    remat_stages: `create` takes `remat_policy` and rematerialises each stage
      with it (config.model.remat 'stages' or 'all').
  """

  create: Callable[..., nn.Module]
  stage_names: tuple[str, ...]
  top_stage: str
  taps: Mapping[int, tuple[str, ...]]
  options: tuple[str, ...] = ()
  torchvision: TorchvisionLayout | None = None
  remat_stages: bool = False

  def mid_level_stages(self, top_stage: str | None = None) -> tuple[str, ...]:
    """Stages that can be taps: those before the top-level map."""
    top = top_stage or self.top_stage
    return self.stage_names[:self.stage_names.index(top)]


RESNET_LAYOUT = TorchvisionLayout(
    family='ResNet',
    owns=lambda keys: any(k.startswith(('conv1.', 'layer1.')) for k in keys),
    module_path=resnet.torchvision_module_path,
    variant=resnet.torchvision_variant,
    options=resnet.torchvision_options,
    classifier='fc')

BACKBONES: dict[str, BackboneSpec] = {
    name: BackboneSpec(
        create=functools.partial(resnet.ResNet, stage_sizes=stage_sizes, block_cls=block_cls),
        stage_names=resnet.STAGE_NAMES, top_stage='layer4',
        taps={2: ('layer2', 'layer3'), 3: ('layer1', 'layer2', 'layer3')},
        options=('zero_init_residual',), torchvision=RESNET_LAYOUT, remat_stages=True)
    for name, (stage_sizes, block_cls) in resnet.RESNET_VARIANTS.items()
}

VGG_LAYOUT = TorchvisionLayout(
    family='VGG',
    owns=vgg.torchvision_owns,
    module_path=lambda modules: modules,
    variant=vgg.torchvision_variant,
    options=vgg.torchvision_options,
    classifier='classifier',
    to_flax=vgg.torchvision_to_flax)

# Taps and L_N are choices (the paper does not show them), at the strides of
# ResNet's: with pooled stage maps block3 / block4 / block5 are at 8 / 16 / 32.
BACKBONES.update({
    vgg.variant_name(depth, batch_norm): BackboneSpec(
        create=functools.partial(vgg.VGG, convs_per_block=convs, batch_norm=batch_norm),
        stage_names=vgg.STAGE_NAMES, top_stage='block5',
        taps={2: ('block3', 'block4'), 3: ('block2', 'block3', 'block4')},
        options=('stage_output',), torchvision=VGG_LAYOUT)
    for depth, convs in vgg.VGG_DEPTHS.items() for batch_norm in (False, True)
})


def get(name: str) -> BackboneSpec:
  """The registered backbone `name` (config.model.backbone)."""
  if name not in BACKBONES:
    raise UserError(f'config.model.backbone={name!r} is not one of {tuple(BACKBONES)}.')
  return BACKBONES[name]
