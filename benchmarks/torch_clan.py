"""CLAN in PyTorch with the layers and shapes of clan_jax.models.CLAN, for speed comparisons.

The backbone is tests/torch_resnet.py's torchvision-layout ResNet (its `fc` is
replaced by an identity, as CLAN has its own heads); CLCA, CLSA and the four
heads follow clan_jax/models/clca.py, clsa.py and clan.py with the spec's
default choices (softmax over keys without 1/sqrt(d), bilinear Up, W_g before
Up, avg-pooled CLSA map, concatenated refined map). The attention is
`F.scaled_dot_product_attention` on [B, heads=1, N, C] tensors: the 4-D form
is the one for which PyTorch picks its flash or memory-efficient kernel on a
GPU (a 3-D [B, N, C] input takes the math path, which builds the [N, N]
matrix). With the same weights it computes the JAX CLAN's function
(tests/test_torch_clan.py loads one into the other and compares the logits).
"""
import torch
import torch.nn.functional as F
from torch import nn

from clan_jax.models.resnet import RESNET_VARIANTS, STAGE_NAMES
from tests.torch_resnet import BasicBlock, Bottleneck, ResNet


class CLCA(nn.Module):
  """L̂_s = L_s + BN(W_y(softmax(W_θ(f) W_φ(f)^T) W_k(L_s))), f = Up(W_g(L_N)) + W_l(L_s)."""

  def __init__(self, mid_channels: int, top_channels: int, inner_ratio: float = 0.5):
    super().__init__()
    inner = max(1, int(round(mid_channels * inner_ratio)))
    self.w_g = nn.Conv2d(top_channels, inner, 1)
    self.w_l = nn.Conv2d(mid_channels, inner, 1)
    self.w_theta = nn.Conv2d(inner, inner, 1)
    self.w_phi = nn.Conv2d(inner, inner, 1)
    self.w_k = nn.Conv2d(mid_channels, inner, 1)
    self.w_y = nn.Conv2d(inner, mid_channels, 1)
    self.bn_y = nn.BatchNorm2d(mid_channels)
    nn.init.zeros_(self.bn_y.weight)

  def forward(self, mid: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """[B, C_s, H_s, W_s], [B, C_g, H_g, W_g] -> [B, C_s, H_s, W_s]."""
    b, _, h, w = mid.shape
    g = F.interpolate(self.w_g(top), size=(h, w), mode='bilinear', align_corners=False)
    f = g + self.w_l(mid)
    # [B, C, H, W] -> [B, 1, N, C]; on a channels-last map, a view.
    heads = lambda x: x.flatten(2).transpose(1, 2).unsqueeze(1)
    y = F.scaled_dot_product_attention(
        heads(self.w_theta(f)), heads(self.w_phi(f)), heads(self.w_k(mid)), scale=1.0)
    y = y.squeeze(1).transpose(1, 2).reshape(b, -1, h, w)
    return mid + self.bn_y(self.w_y(y))


class CLSA(nn.Module):
  """L_N * avgpool(sigmoid(BN(conv7x7([max_c L̂_s, mean_c L̂_s])))), clsa.norm='batchnorm'."""

  def __init__(self, kernel_size: int = 7):
    super().__init__()
    self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
    self.bn = nn.BatchNorm2d(1)

  def forward(self, mid: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    descriptor = torch.cat([mid.amax(1, keepdim=True), mid.mean(1, keepdim=True)], 1)
    attention = torch.sigmoid(self.bn(self.conv(descriptor)))
    window = (mid.shape[2] // top.shape[2], mid.shape[3] // top.shape[3])
    return top * F.avg_pool2d(attention, window)


class CLAN(nn.Module):
  """Backbone, CLCA and CLSA on each mid-level tap, and heads on L̂_s, L_N and L̂_N."""

  def __init__(self, num_classes: int, backbone: str = 'resnet50', width: int = 64,
               mid_level_taps: tuple[str, ...] = ('layer2', 'layer3')):
    super().__init__()
    stage_sizes, flax_block = RESNET_VARIANTS[backbone]
    block = Bottleneck if flax_block.expansion == 4 else BasicBlock
    self.backbone = ResNet(block, stage_sizes, width)
    self.backbone.fc = nn.Identity()
    channels = {name: width * 2**i * block.expansion for i, name in enumerate(STAGE_NAMES)}
    top = channels['layer4']
    self.taps = mid_level_taps
    self.clca = nn.ModuleDict({t: CLCA(channels[t], top) for t in mid_level_taps})
    self.clsa = nn.ModuleDict({t: CLSA() for t in mid_level_taps})
    self.heads = nn.ModuleDict({
        **{t: nn.Linear(channels[t], num_classes) for t in mid_level_taps},
        'top': nn.Linear(top, num_classes),
        'refined': nn.Linear(top * len(mid_level_taps), num_classes)})

  def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Images [B, 3, H, W] -> {branch: logits [B, K]} (float32 under autocast too)."""
    features = self.backbone(images)
    top = features['layer4']
    mids = {t: self.clca[t](features[t], top) for t in self.taps}
    refined = torch.cat([self.clsa[t](mids[t], top) for t in self.taps], 1)
    maps = {**mids, 'top': top, 'refined': refined}
    return {name: self.heads[name](maps[name].mean((2, 3))).float() for name in maps}


def clan_loss(branches: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
  """The sum of the branches' mean cross-entropies (all weights 1)."""
  return sum(F.cross_entropy(logits, labels) for logits in branches.values())


def sgd_step(num_classes: int, backbone: str, width: int, batch: int, size: int, *,
             device: torch.device, dtype: str = 'float32', compile_backend: str | None = None):
  """One SGD step (momentum 0.9, weight decay 5e-4) of a channels-last CLAN on a
  fixed random batch, as a callable that returns the loss; `compile_backend`
  puts the forward under `torch.compile`, bf16 autocast when `dtype` is bfloat16.
  """
  torch.manual_seed(0)
  model = CLAN(num_classes, backbone, width).to(device, memory_format=torch.channels_last).train()
  optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
  forward = torch.compile(model, backend=compile_backend) if compile_backend else model
  images = torch.randn(batch, 3, size, size, device=device).to(memory_format=torch.channels_last)
  labels = torch.randint(0, num_classes, (batch,), device=device)

  def step():
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == 'bfloat16'):
      loss = clan_loss(forward(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss

  return step
