"""bfloat16 compute with float32 state, and rematerialisation of stages and CLCA."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import timing
from clan_jax import models, sharding
from clan_jax.training import setup
from configs import test as test_config


def _step(config, mesh):
  run = setup.create(config, 4, mesh, steps_per_epoch=4, total_steps=100)
  return run.state, run.train_step


def _batch(size, image_size, mesh):
  rng = np.random.default_rng(0)
  return jax.device_put(
      {'image': rng.normal(size=(size, image_size, image_size, 3)).astype(np.float32),
       'label': rng.integers(0, 4, size).astype(np.int32)}, sharding.batch_sharding(mesh))


@pytest.mark.slow
def test_bfloat16_step_trains_with_float32_state():
  config = test_config.get_config()
  config.model.dtype = 'bfloat16'
  config.mesh.data = 1
  mesh = sharding.create_mesh(config.mesh)
  state, train_step = _step(config, mesh)
  batch = _batch(16, config.data.image_size, mesh)
  losses = []
  for _ in range(8):
    state, step_metrics = train_step(state, batch)
    losses.append(float(step_metrics.compute()['loss']))
  assert losses[-1] < 0.7 * losses[0], losses
  floats = [x for x in jax.tree.leaves((state.params, state.batch_stats, state.opt_state))
            if jnp.issubdtype(x.dtype, jnp.floating)]
  assert {x.dtype for x in floats} == {jnp.dtype('float32')}
  # The compute really is bfloat16: the convolutions' outputs are.
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  _, intermediates = state.apply_fn(
      variables, batch['image'][:2], train=False,
      capture_intermediates=lambda m, _: m.name == 'conv1', mutable=['intermediates'])
  conv_out = intermediates['intermediates']['backbone']['conv1']['__call__'][0]
  assert conv_out.dtype == jnp.bfloat16


def _one_step(config, mesh, batch):
  state, train_step = _step(config, mesh)
  new_state, step_metrics = train_step(state, batch)
  return float(step_metrics.compute()['loss']), jax.device_get(new_state.params)


@pytest.mark.slow
def test_remat_keeps_the_results_and_saves_fewer_activations():
  config = test_config.get_config()
  config.mesh.data = 1
  mesh = sharding.create_mesh(config.mesh)
  batch = _batch(8, config.data.image_size, mesh)
  saved, results = {}, {}
  for mode in ('none', 'stages', 'all'):
    config.model.remat = mode
    saved[mode] = timing.saved_activation_bytes(
        models.create_model(config.model, 4), config.data.image_size, 8)
    if mode != 'stages':
      results[mode] = _one_step(config, mesh, batch)
  assert saved['all'] < saved['stages'] < 0.7 * saved['none'], saved
  (plain_loss, plain_params), (remat_loss, remat_params) = results['none'], results['all']
  assert remat_loss == pytest.approx(plain_loss, rel=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               plain_params, remat_params)
