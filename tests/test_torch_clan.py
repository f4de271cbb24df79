"""The PyTorch CLAN of the benchmarks has the JAX CLAN's layers; the scaling benchmark runs."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks import torch_clan
from clan_jax import models
from configs import base


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


def test_scaling_benchmark_prints_jax_and_pytorch_side_by_side():
  """benchmarks/scaling.py as the README and BENCHMARKS.md show it, on a tiny CLAN."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run(
      [sys.executable, 'benchmarks/scaling.py', '--size=32', '--batch=2', '--width=4',
       '--backbone=resnet18', '--steps=1', '--warmup=0', '--num_classes=3',
       '--dtypes=bfloat16', '--remat=none,all', '--jax_platforms=cpu'],
      cwd=repo, capture_output=True, text=True, timeout=1800)
  assert result.returncode == 0, result.stderr[-3000:]
  table = result.stdout.split('JAX/torch')[-1].strip().splitlines()
  assert [row.split()[0] for row in table] == ['bf16', 'bf16'], table
  assert 'remat=all' in table[1], table
  assert all(row.rstrip().endswith('x') for row in table), table
  assert 'no known peak' in result.stdout  # CPU: no MFU without --peak_tflops
