"""Mesh strategies: FSDP and pure data parallelism train the same model the same way."""
import jax
import ml_collections
import numpy as np
import pytest

from clan_jax import sharding
from clan_jax.training import setup
from configs import test as test_config

FSDP_MIN_SIZE = 1024


def _mesh(strategy, **fields):
  return sharding.create_mesh(ml_collections.ConfigDict(
      {'strategy': strategy, 'data': -1, 'fsdp': -1, **fields}))


def test_mesh_axes_follow_the_strategy():
  assert dict(_mesh('data').shape) == {'data': 8, 'fsdp': 1}
  assert dict(_mesh('fsdp').shape) == {'data': 1, 'fsdp': 8}
  assert dict(_mesh('fsdp', data=2).shape) == {'data': 2, 'fsdp': 4}
  assert sharding.num_batch_shards(_mesh('fsdp', data=2)) == 8
  with pytest.raises(ValueError, match='config.mesh.fsdp=3'):
    _mesh('fsdp', fsdp=3)
  with pytest.raises(ValueError, match='config.mesh.strategy'):
    _mesh('zero3')


def test_fsdp_spec_splits_the_largest_dividing_dimension():
  assert sharding.fsdp_spec((3, 3, 16, 32), 8, 1024) == jax.sharding.PartitionSpec(
      None, None, None, 'fsdp')
  assert sharding.fsdp_spec((3, 3, 16, 12), 8, 1024) == jax.sharding.PartitionSpec(
      None, None, 'fsdp', None)
  assert sharding.fsdp_spec((32,), 8, 1024) == jax.sharding.PartitionSpec()  # small
  assert sharding.fsdp_spec((3, 3, 15, 15), 8, 1) == jax.sharding.PartitionSpec()
  assert sharding.fsdp_spec((64, 64), 1, 1) == jax.sharding.PartitionSpec()


def _train(mesh, batch, num_steps=2):
  config = test_config.get_config()
  config.mesh.fsdp_min_size = FSDP_MIN_SIZE
  run = setup.create(config, 4, mesh, steps_per_epoch=4, total_steps=100)
  state, train_step = run.state, run.train_step
  losses = []
  for _ in range(num_steps):
    state, step_metrics = train_step(state, jax.device_put(batch,
                                                           sharding.batch_sharding(mesh)))
    losses.append(float(step_metrics.compute()['loss']))
  return state, losses


@pytest.mark.slow
def test_fsdp_and_data_parallel_train_alike_and_fsdp_shards_the_large_arrays():
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(16, 32, 32, 3)).astype(np.float32),
           'label': rng.integers(0, 4, 16).astype(np.int32)}
  data_state, data_losses = _train(_mesh('data'), batch)
  fsdp_state, fsdp_losses = _train(_mesh('fsdp'), batch)
  np.testing.assert_allclose(fsdp_losses, data_losses, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               *(jax.device_get((s.params, s.batch_stats, s.opt_state))
                 for s in (data_state, fsdp_state)))

  kernel = fsdp_state.params['backbone']['layer4']['0']['conv2']['kernel']  # 3x3x32x32
  momentum = fsdp_state.opt_state.inner_states['backbone'].inner_state[1].trace[
      'backbone']['layer4']['0']['conv2']['kernel']
  for array in (kernel, momentum):
    assert array.size >= FSDP_MIN_SIZE
    assert array.sharding.spec == jax.sharding.PartitionSpec(None, None, None, 'fsdp')
    assert {s.data.nbytes for s in array.addressable_shards} == {array.nbytes // 8}
  bias = fsdp_state.params['head_top']['fc']['bias']
  assert bias.sharding.is_fully_replicated

  def per_device_bytes(state):
    return sum(x.addressable_shards[0].data.nbytes
               for x in jax.tree.leaves((state.params, state.opt_state)))

  total = sum(x.nbytes for x in jax.tree.leaves((data_state.params, data_state.opt_state)))
  assert per_device_bytes(data_state) == total
  # Most bytes sit in large arrays, so each device holds little more than 1/8.
  assert per_device_bytes(fsdp_state) < 0.25 * total
