"""The max pool with a sliced backward pass is flax's max pool, bit for bit."""
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clan_jax import sharding
from clan_jax.models import pooling
from clan_jax.training import losses, setup
from configs import test as test_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bits(x) -> np.ndarray:
  x = np.asarray(x)
  return x.view(np.dtype(f'u{x.dtype.itemsize}'))


def _tied_input(shape, dtype):
  """Small non-negative integers: the zeros and repeats a ReLU leaves, ties in most windows."""
  rng = np.random.default_rng(0)
  return jnp.asarray(np.maximum(np.round(2 * rng.normal(size=shape)), 0), dtype)


@pytest.mark.parametrize('shape,window,strides,padding', [
    ((4, 24, 24, 8), (3, 3), (2, 2), ((1, 1), (1, 1))),  # the ResNet stem
    ((2, 25, 23, 8), (3, 3), (2, 2), ((1, 1), (1, 1))),  # odd sizes: windows overlap unevenly
    ((2, 15, 15, 8), (2, 2), (2, 2), ((0, 0), (0, 0))),  # VGG's, a row and column left over
    ((2, 16, 16, 8), (4, 4), (4, 4), ((0, 0), (0, 0))),  # CLSA's 'max' downsample
])
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('tied', [True, False])
def test_values_and_gradient_are_flax_max_pool_bit_for_bit(shape, window, strides, padding,
                                                           dtype, tied):
  assert jax.default_backend() in pooling.SLICED_BACKWARD_PLATFORMS
  x = (_tied_input(shape, dtype) if tied
       else jnp.asarray(np.random.default_rng(1).normal(size=shape), dtype))
  outputs, grads = [], []
  for pool in (lambda x: pooling.max_pool(x, window, strides, padding),
               lambda x: nn.max_pool(x, window, strides=strides, padding=padding)):
    y, vjp = jax.vjp(pool, x)
    cotangent = jnp.asarray(np.random.default_rng(2).normal(size=y.shape), dtype)
    outputs.append(y)
    grads.append(jax.jit(lambda c, vjp=vjp: vjp(c)[0])(cotangent))
  np.testing.assert_array_equal(_bits(outputs[0]), _bits(outputs[1]))
  np.testing.assert_array_equal(_bits(grads[0]), _bits(grads[1]))
  assert np.count_nonzero(np.asarray(grads[0], np.float32)) > 0


def _run(config, batch, steps):
  """Each step's loss, the first step's gradients and the state after `steps` steps."""
  mesh = sharding.create_mesh(config.mesh)
  run = setup.create(config, 4, mesh, steps_per_epoch=4, total_steps=100)
  state = run.state

  def loss(params):
    outputs, _ = state.apply_fn({'params': params, 'batch_stats': state.batch_stats},
                                batch['image'], train=True, mutable=['batch_stats'])
    return jnp.mean(losses.cross_entropy(outputs['combined'], batch['label']))

  grads = jax.device_get(jax.jit(jax.grad(loss))(state.params))
  hlo = run.train_step.lower(state, batch).as_text(dialect='hlo')
  step_losses = []
  for _ in range(steps):
    state, step_metrics = run.train_step(state, batch)
    step_losses.append(float(step_metrics.compute()['loss']))
  return step_losses, grads, jax.device_get(state), hlo


@pytest.mark.slow
def test_train_step_is_unchanged_by_the_sliced_backward(monkeypatch):
  config = test_config.get_config()
  config.mesh.data = 1
  # The plain backbone: its stem's pool is the step's; CLCA and CLSA only cost compile time.
  config.model.use_mid_block = config.model.use_top_block = False
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(8, 32, 32, 3)).astype(np.float32),
           'label': rng.integers(0, 4, 8).astype(np.int32)}
  sliced = _run(config, batch, steps=3)
  monkeypatch.setattr(pooling, 'SLICED_BACKWARD_PLATFORMS', ())
  selected = _run(config, batch, steps=3)
  assert 'select-and-scatter' in selected[3] and 'select-and-scatter' not in sliced[3]
  assert sliced[0] == selected[0]
  for tree_sliced, tree_selected in zip(sliced[1:3], selected[1:3]):
    for a, b in zip(jax.tree.leaves(tree_sliced), jax.tree.leaves(tree_selected)):
      np.testing.assert_array_equal(_bits(a), _bits(b))


@pytest.mark.slow
def test_the_benchmark_times_both_gradients_and_finds_the_states_equal():
  result = subprocess.run(
      [sys.executable, '-m', 'benchmarks.max_pool', '--size=32', '--batch=4', '--width=4',
       '--num_classes=3', '--rounds=2', '--steps=1'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  rounds = re.findall(r'^round \d: select-and-scatter [\d.]+, sliced [\d.]+; '
                      r'states bit-for-bit equal: (\w+)$', result.stdout, re.M)
  assert rounds == ['True', 'True'], result.stdout
  assert re.search(r'sliced speed-up [\d.]+x', result.stdout), result.stdout
  assert re.search(r'stem max pool alone on \[4, 16, 16, 4\].*select-and-scatter [\d.]+ ms, '
                   r'sliced [\d.]+ ms', result.stdout), result.stdout
