"""The PyTorch CLAN of the benchmarks computes the JAX CLAN's function.

benchmarks.scaling, which times it, runs in tests/test_gpu_script.py.
"""
import dataclasses

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from benchmarks import torch_clan
from clan_jax import models
from clan_jax.models import backbones, resnet, torchvision_weights
from configs import base
from tests import torch_resnet


def _clan_module_path(modules: list[str]) -> list[str]:
  """Torch CLAN's module path -> the JAX CLAN's: 'clca.layer2.w_g' -> clca_layer2/w_g."""
  group, *rest = modules
  if group == 'backbone':
    return [group, *resnet.torchvision_module_path(rest)]
  if group == 'heads':
    return [f'head_{rest[0]}', 'fc']
  return [f'{group}_{rest[0]}', *rest[1:]]


def _jax_variables(torch_model: torch.nn.Module, expected: dict) -> dict:
  """The torch CLAN's weights and BatchNorm statistics as the JAX CLAN's variables.

  The backbone's renames and every layout change are the weight converter's.
  """
  layout = dataclasses.replace(backbones.RESNET_LAYOUT, module_path=_clan_module_path)
  arrays = {}
  for key, value in torch_model.state_dict().items():
    if not key.endswith('num_batches_tracked'):
      flax_key = torchvision_weights._flax_key(key, value.dim(), layout)  # pylint: disable=protected-access
      arrays[flax_key] = torchvision_weights._to_flax_layout(  # pylint: disable=protected-access
          flax_key, value.numpy(), layout)
  torchvision_weights.check_arrays(arrays, traverse_util.flatten_dict(expected, sep='/'),
                                   'the torch CLAN', 'the JAX CLAN')
  return traverse_util.unflatten_dict(arrays, sep='/')


@pytest.mark.parametrize('train', [False, True])
def test_torch_clan_and_jax_clan_compute_the_same_function(train):
  """The same weights (random, BatchNorm statistics too) in, the same branch logits out."""
  config = base.get_model_config()
  config.backbone, config.backbone_width = 'resnet50', 8
  model = models.create_model(config, num_classes=7)
  images = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
  torch.manual_seed(0)
  torch_model = torch_clan.CLAN(num_classes=7, backbone='resnet50', width=8)
  # Random statistics and scales everywhere: CLCA's zero-initialised BatchNorm
  # would otherwise make the block the identity and hide its attention.
  torch_resnet.randomize_batch_norm(torch_model, seed=1)
  # PyTorch's default init gives logits q.k of std ~0.1 here, a near-uniform
  # softmax that would hide a wrong scale or a transposed affinity: sharpen it.
  with torch.no_grad():
    for clca in torch_model.clca.values():
      clca.w_theta.weight.mul_(10.0)
      clca.w_phi.weight.mul_(10.0)
  expected = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
  variables = _jax_variables(torch_model, expected)

  torch_model.train(train)
  with torch.no_grad():
    torch_logits = torch_model(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(
        memory_format=torch.channels_last))
  with jax.default_matmul_precision('highest'):
    outputs = model.apply(variables, images, train=train, mutable=['batch_stats'])[0]
  assert outputs['branches'].keys() == torch_logits.keys()
  for branch, logits in outputs['branches'].items():
    np.testing.assert_allclose(logits, torch_logits[branch].numpy(), atol=1e-4, rtol=1e-4,
                               err_msg=branch)


def test_torch_clan_has_the_parameter_shapes_of_the_jax_clan():
  config = base.get_model_config()
  config.backbone, config.backbone_width = 'resnet50', 8
  model = models.create_model(config, num_classes=7)
  params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                          jnp.zeros((1, 64, 64, 3)))['params']
  torch_model = torch_clan.CLAN(num_classes=7, backbone='resnet50', width=8)
  # Conv kernels HWIO vs OIHW, dense kernels (in, out) vs (out, in): compare sorted shapes.
  jax_shapes = sorted(tuple(sorted(x.shape)) for x in jax.tree.leaves(params))
  torch_shapes = sorted(tuple(sorted(d for d in p.shape if d != 1 or p.dim() == 1))
                        for p in torch_model.parameters())
  jax_shapes = sorted(tuple(sorted(d for d in s if d != 1 or len(s) == 1)) for s in jax_shapes)
  assert torch_shapes == jax_shapes

  torch_model.train()
  branches = torch_model(torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last))
  assert {k: tuple(v.shape) for k, v in branches.items()} == {
      b: (2, 7) for b in ('layer2', 'layer3', 'top', 'refined')}
  loss = torch_clan.clan_loss(branches, torch.tensor([0, 3]))
  loss.backward()
  assert np.isfinite(loss.item())
