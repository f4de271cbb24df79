"""A PyTorch ResNet with torchvision's exact modules and state-dict keys, for parity tests.

There is no CPU torchvision build here, so this re-creates torchvision.models.resnet:
BasicBlock / Bottleneck with conv1/bn1/conv2/bn2(/conv3/bn3), `downsample` an
nn.Sequential(conv 1x1, bn), the stride on the bottleneck's 3x3 conv ("v1.5"),
a 7x7 stride-2 stem, max-pool k3 s2 p1, global average pool and `fc`.
Its `width` argument (torchvision: 64) gives tiny models for fast tests.
"""
import torch
from torch import nn

from clan_jax.models.resnet import RESNET_VARIANTS, STAGE_NAMES


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
  return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
  return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes: int, planes: int, stride: int = 1,
               downsample: nn.Module | None = None):
    super().__init__()
    self.conv1 = _conv3x3(inplanes, planes, stride)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = _conv3x3(planes, planes)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return self.relu(out + identity)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes: int, planes: int, stride: int = 1,
               downsample: nn.Module | None = None):
    super().__init__()
    self.conv1 = _conv1x1(inplanes, planes)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = _conv3x3(planes, planes, stride)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = _conv1x1(planes, planes * self.expansion)
    self.bn3 = nn.BatchNorm2d(planes * self.expansion)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return self.relu(out + identity)


class ResNet(nn.Module):
  """torchvision's ResNet; forward returns every stage's map and the logits."""

  def __init__(self, block: type[nn.Module], layers: tuple[int, ...], width: int = 64,
               num_classes: int = 1000):
    super().__init__()
    self.inplanes = width
    self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    for i, (name, blocks) in enumerate(zip(STAGE_NAMES, layers)):
      setattr(self, name, self._make_layer(block, width * 2**i, blocks, 1 if i == 0 else 2))
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(width * 8 * block.expansion, num_classes)

  def _make_layer(self, block: type[nn.Module], planes: int, blocks: int,
                  stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(_conv1x1(self.inplanes, planes * block.expansion, stride),
                                 nn.BatchNorm2d(planes * block.expansion))
    layers = [block(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes * block.expansion
    layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Images [B, 3, H, W] -> {'layer1'..'layer4': [B, C, h, w], 'logits': [B, K]}."""
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    outputs = {}
    for name in STAGE_NAMES:
      x = getattr(self, name)(x)
      outputs[name] = x
    outputs['logits'] = self.fc(torch.flatten(self.avgpool(x), 1))
    return outputs


def resnet(variant: str, width: int = 64, num_classes: int = 1000, seed: int = 0) -> ResNet:
  """A torchvision-layout `variant` in eval mode with random weights AND random BN state.

  torchvision's fresh BatchNorms have mean 0, var 1, scale 1 and bias 0, which
  would hide a swapped or dropped statistic; here all four are random.
  """
  stage_sizes, flax_block = RESNET_VARIANTS[variant]
  block = Bottleneck if flax_block.expansion == 4 else BasicBlock
  torch.manual_seed(seed)
  model = ResNet(block, stage_sizes, width, num_classes)
  randomize_batch_norm(model, seed)
  return model.eval()


def randomize_batch_norm(model: nn.Module, seed: int) -> None:
  """Random scale, bias, running mean and running variance for every BatchNorm2d."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, nn.BatchNorm2d):
        shape = module.num_features
        module.weight.copy_(0.5 + torch.rand(shape, generator=generator))
        module.bias.copy_(0.2 * torch.randn(shape, generator=generator))
        module.running_mean.copy_(0.2 * torch.randn(shape, generator=generator))
        module.running_var.copy_(0.5 + torch.rand(shape, generator=generator))
