"""CLAN used from a Flax NNX program through `flax.nnx.bridge`.

The Linen CLAN is wrapped as docs/nnx.md shows (its snippet is read from the
page and run on the tiny config), and the wrapped model must give the
Linen model's outputs and, trained for one step with nnx.Optimizer, the
parameters and BatchNorm statistics of the same step done the Linen way.
"""
from flax import nnx
import jax
import numpy as np
import optax
import pytest

from clan_jax import models
from clan_jax.training import optimizer as optimizer_lib
from clan_jax.training.losses import clan_loss
from configs import test as test_config
from tests import test_docs

NUM_CLASSES = 4
BATCH = 4


# The snippet's model is the demo's; here it is the tiny one.
_DEMO_CONFIG = 'config = default.get_config()'


def nnx_snippet() -> str:
  """docs/nnx.md's python block, on configs/test.py instead of the demo's config."""
  (block,) = [b for b in test_docs.blocks('docs/nnx.md') if b.lang == 'python']
  assert _DEMO_CONFIG in block.body, f'{block} no longer reads {_DEMO_CONFIG!r}'
  return block.body.replace(_DEMO_CONFIG, 'config = tiny_config()')


def _batch(seed=0):
  # numpy, not jax.random: nothing to compile for the data.
  rng = np.random.default_rng(seed)
  return {'image': rng.normal(size=(BATCH, 32, 32, 3)).astype(np.float32),
          'label': rng.integers(0, NUM_CLASSES, size=(BATCH,)).astype(np.int32)}


def _linen_variables(model: nnx.Module) -> dict:
  """The wrapped model's state as Linen's {'params', 'batch_stats'} dicts."""
  return {'params': nnx.to_pure_dict(nnx.state(model, nnx.Param)),
          'batch_stats': nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))}


def _set_linen_variables(model: nnx.Module, variables: dict) -> None:
  """Loads Linen's {'params', 'batch_stats'} dicts into the wrapped model."""
  for kind, collection in ((nnx.Param, 'params'), (nnx.BatchStat, 'batch_stats')):
    state = nnx.state(model, kind)
    nnx.replace_by_pure_dict(state, variables[collection])
    nnx.update(model, state)


def _perturbed(variables: dict, seed=1) -> dict:
  """Init values moved off their zeros and ones, with non-trivial running stats.

  The zero-initialised scales (CLCA's output BatchNorm, the residuals' last
  BatchNorm) would hide their branches from the comparisons, and running
  statistics of 0 and 1 would not show that eval mode reads them.
  """
  rng = np.random.default_rng(seed)
  noise = lambda x, s: rng.normal(scale=s, size=x.shape).astype(np.float32)
  params = jax.tree.map(lambda x: np.asarray(x) + noise(x, 0.1), variables['params'])
  stats = jax.tree.map(lambda x: np.asarray(x) + noise(x, 0.1), variables['batch_stats'])
  # Variances must stay positive.
  stats = jax.tree_util.tree_map_with_path(
      lambda path, x: np.abs(x) + 0.5 if path[-1].key == 'var' else x, stats)
  return {'params': params, 'batch_stats': stats}


@pytest.fixture(scope='module')
def snippet_run():
  """The names docs/nnx.md's snippet defines, run on the tiny CLAN of configs/test.py."""
  namespace = {'tiny_config': test_config.get_config}
  # Threefry's XLA:CPU compile dominated this test's time (about 150 random
  # leaves); the key implementation is no part of what the bridge does.
  with jax.default_prng_impl('rbg'):
    exec(nnx_snippet(), namespace)  # pylint: disable=exec-used
  assert namespace['num_classes'] == NUM_CLASSES
  return namespace


def test_the_docs_snippet_wraps_clan_as_an_nnx_module(snippet_run):
  model, clan = snippet_run['model'], snippet_run['clan']
  assert isinstance(model, nnx.Module) and isinstance(clan, models.CLAN)
  # Both blocks on: the mid-level, top and refined branches all come out.
  expected = models.branch_names(clan.mid_level_taps, clan.use_mid_block, clan.use_top_block)
  assert len(expected) == 4
  assert set(snippet_run['outputs']['branches']) == set(expected)
  assert snippet_run['outputs']['combined'].shape == (len(snippet_run['images']), NUM_CLASSES)
  # The bridge keeps Linen's trees: the same names, shapes and dtypes as
  # Linen's init, so variables move between the two without a mapping.
  linen = jax.eval_shape(lambda x: clan.init(jax.random.key(0), x, train=False),
                         snippet_run['images'])
  layout = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
  assert layout(_linen_variables(model)) == layout(
      {'params': linen['params'], 'batch_stats': linen['batch_stats']})


def test_nnx_outputs_equal_linen_apply(snippet_run):
  # Random images, not the snippet's blank ones, for a comparison that means something.
  model, clan, images = nnx.clone(snippet_run['model']), snippet_run['clan'], _batch()['image']
  variables = _perturbed(_linen_variables(model))
  _set_linen_variables(model, variables)
  got = nnx.jit(lambda m, x: m(x, train=False))(model, images)
  want = jax.jit(lambda v, x: clan.apply(v, x, train=False))(variables, images)
  assert set(got['branches']) == set(want['branches'])
  for name in want['branches']:
    np.testing.assert_allclose(got['branches'][name], want['branches'][name],
                               rtol=1e-6, atol=1e-6, err_msg=name)
  np.testing.assert_allclose(got['combined'], want['combined'], rtol=1e-6, atol=1e-6)
  # Eval mode reads the running statistics and leaves them as they were.
  jax.tree.map(np.testing.assert_array_equal, _linen_variables(model)['batch_stats'],
               variables['batch_stats'])


def test_one_nnx_training_step_equals_the_linen_step(snippet_run):
  model, clan = nnx.clone(snippet_run['model']), snippet_run['clan']
  config = snippet_run['config']
  before = _perturbed(_linen_variables(model), seed=2)
  _set_linen_variables(model, before)
  batch = _batch(seed=3)
  # The project's optimizer: the backbone and the new layers at their own rates.
  tx, _ = optimizer_lib.create_optimizer(config, steps_per_epoch=10, total_steps=100)
  loss = lambda branches, labels: clan_loss(branches, labels, branch_weights={})[0]

  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def nnx_step(model, optimizer, batch):
    def loss_fn(model):
      # The bridge writes the new running statistics back into the model.
      outputs = model(batch['image'], train=True, mutable=['batch_stats'])
      return loss(outputs['branches'], batch['label'])
    value, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return value

  @jax.jit
  def linen_step(variables, batch):
    def loss_fn(params):
      outputs, updates = clan.apply({'params': params, 'batch_stats': variables['batch_stats']},
                                    batch['image'], train=True, mutable=['batch_stats'])
      return loss(outputs['branches'], batch['label']), updates
    (value, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables['params'])
    steps, _ = tx.update(grads, tx.init(variables['params']), variables['params'])
    return value, {'params': optax.apply_updates(variables['params'], steps),
                   'batch_stats': updates['batch_stats']}

  nnx_loss = nnx_step(model, optimizer, batch)
  linen_loss, want = linen_step(before, batch)
  assert np.isfinite(nnx_loss)
  np.testing.assert_allclose(nnx_loss, linen_loss, rtol=1e-6)
  got = _linen_variables(model)
  moved = lambda collection: jax.tree.leaves(jax.tree.map(
      lambda a, b: bool(np.any(a != b)), got[collection], before[collection]))
  assert all(moved('params')), 'some parameters did not move'
  assert all(moved('batch_stats')), 'the running statistics were not written back'
  for collection in ('params', 'batch_stats'):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
                 got[collection], want[collection])
  assert int(optimizer.step[...]) == 1

