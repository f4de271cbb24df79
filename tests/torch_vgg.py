"""A PyTorch VGG with torchvision's exact modules and state-dict keys, for parity tests.

There is no CPU torchvision build here, so this re-creates torchvision.models.vgg:
`features` an nn.Sequential of Conv2d(3x3, padding 1) [+ BatchNorm2d] + ReLU
per conv and MaxPool2d(2, 2) per block, AdaptiveAvgPool2d((7, 7)), and
`classifier` Linear-ReLU-Dropout-Linear-ReLU-Dropout-Linear. Its `width`
(torchvision: 64) and `classifier_width` (4096) give small models for fast tests.
"""
import torch
from torch import nn

from clan_jax.models.vgg import STAGE_NAMES, VGG_DEPTHS
from tests import torch_resnet


class VGG(nn.Module):
  """torchvision's VGG; forward returns every block's map (pooled and before pooling)."""

  def __init__(self, convs_per_block: tuple[int, ...], batch_norm: bool, width: int = 64,
               num_classes: int = 1000, classifier_width: int = 4096):
    super().__init__()
    layers, channels = [], 3
    for num_convs, multiplier in zip(convs_per_block, (1, 2, 4, 8, 8)):
      for _ in range(num_convs):
        layers.append(nn.Conv2d(channels, width * multiplier, kernel_size=3, padding=1))
        if batch_norm:
          layers.append(nn.BatchNorm2d(width * multiplier))
        layers.append(nn.ReLU(inplace=True))
        channels = width * multiplier
      layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    self.features = nn.Sequential(*layers)
    self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    self.classifier = nn.Sequential(
        nn.Linear(channels * 7 * 7, classifier_width), nn.ReLU(True), nn.Dropout(),
        nn.Linear(classifier_width, classifier_width), nn.ReLU(True), nn.Dropout(),
        nn.Linear(classifier_width, num_classes))

  def forward(self, x: torch.Tensor) -> dict[str, dict[str, torch.Tensor] | torch.Tensor]:
    """Images [B, 3, H, W] -> {'pooled': {'block1'..: [B, C, h, w]}, 'conv': {...},
    'logits': [B, K]}; 'conv' holds each block's map before its max-pool."""
    outputs = {'pooled': {}, 'conv': {}}
    stages = iter(STAGE_NAMES)
    for layer in self.features:
      if isinstance(layer, nn.MaxPool2d):
        stage = next(stages)
        outputs['conv'][stage] = x
        x = layer(x)
        outputs['pooled'][stage] = x
      else:
        x = layer(x)
    outputs['logits'] = self.classifier(torch.flatten(self.avgpool(x), 1))
    return outputs


def vgg(depth: int, batch_norm: bool, width: int = 64, num_classes: int = 1000,
        classifier_width: int = 4096, seed: int = 0) -> VGG:
  """A torchvision-layout VGG in eval mode with random weights AND random BN state."""
  torch.manual_seed(seed)
  model = VGG(VGG_DEPTHS[depth], batch_norm, width, num_classes, classifier_width)
  torch_resnet.randomize_batch_norm(model, seed)
  return model.eval()
