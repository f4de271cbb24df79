"""The loss, optimizer, sharded train and eval steps, checkpoints and the training loop."""
import glob
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tensorboard.plugins.hparams import plugin_data_pb2
import tensorflow as tf

from clan_jax import models, sharding
from clan_jax.experiments import ablation_report
from clan_jax.workdir import checkpointing, trained_model
from clan_jax.data import input_pipeline
from clan_jax.training import losses, optimizer, setup, steps, trainer
from clan_jax.training import train_state
from clan_jax.training.train_state import create_train_state
from configs import base
from configs import test as test_config
from configs import vgg16

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(data_dir, **overrides):
  config = test_config.get_config()
  config.data.data_dir = data_dir
  config.update(overrides)
  return config


def _setup(config, mesh, num_classes=4):
  run = setup.create(config, num_classes, mesh, steps_per_epoch=4, total_steps=100)
  return run.state, run.train_step


def _batch(size=16, image_size=32, num_classes=4, seed=0):
  rng = np.random.default_rng(seed)
  return {'image': rng.normal(size=(size, image_size, image_size, 3)).astype(np.float32),
          'label': rng.integers(0, num_classes, size).astype(np.int32)}


def _put(batch, mesh):
  return jax.device_put(batch, sharding.batch_sharding(mesh))


def test_loss_is_the_weighted_sum_of_branch_cross_entropies():
  labels = jnp.array([0, 2])
  branches = {'a': jnp.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
              'b': jnp.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])}
  total, per_branch = losses.clan_loss(branches, labels, branch_weights={'b': 0.5})
  ce = lambda logits: float(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
      logits, labels)))
  assert per_branch['a'] == pytest.approx(ce(branches['a']))
  assert total == pytest.approx(ce(branches['a']) + 0.5 * ce(branches['b']))
  smoothed, _ = losses.clan_loss(branches, labels, branch_weights={}, label_smoothing=0.1)
  assert smoothed != pytest.approx(ce(branches['a']) + ce(branches['b']))


@pytest.mark.parametrize('mode', ['l2', 'decoupled'])
def test_new_layers_learn_faster_than_the_backbone(mode):
  config = _config(None, optim=dict(learning_rate=0.1, new_layers_lr_multiplier=10.0,
                                     momentum=0.0, weight_decay=0.01, weight_decay_mode=mode,
                                     warmup_epochs=0.0))
  tx, lr_fn = optimizer.create_optimizer(config, steps_per_epoch=10, total_steps=1000)
  params = {'backbone': {'w': jnp.ones(3)}, 'head_top': {'w': jnp.ones(3)}}
  grads = {'backbone': {'w': jnp.full(3, 2.0)}, 'head_top': {'w': jnp.full(3, 2.0)}}
  updates, _ = tx.update(grads, tx.init(params), params)
  lr = float(lr_fn(0))
  assert lr == pytest.approx(0.1)
  # Without momentum, l2 and decoupled decay give the same first update.
  np.testing.assert_allclose(updates['backbone']['w'], -lr * (2.0 + 0.01), rtol=1e-6)
  np.testing.assert_allclose(updates['head_top']['w'], -10 * lr * (2.0 + 0.01), rtol=1e-6)


def test_l2_decay_goes_through_momentum_and_decoupled_does_not():
  params = {'backbone': {'w': jnp.ones(1)}}
  grads = {'backbone': {'w': jnp.zeros(1)}}
  second_updates = {}
  for mode in ('l2', 'decoupled'):
    config = _config(None, optim=dict(momentum=0.9, weight_decay=0.1, weight_decay_mode=mode,
                                       warmup_epochs=0.0, learning_rate=1.0))
    tx, _ = optimizer.create_optimizer(config, steps_per_epoch=10, total_steps=10**6)
    opt_state = tx.init(params)
    _, opt_state = tx.update(grads, opt_state, params)
    updates, _ = tx.update(grads, opt_state, params)
    second_updates[mode] = float(updates['backbone']['w'][0])
  assert second_updates['l2'] == pytest.approx(-0.1 * 1.9, rel=1e-4)
  assert second_updates['decoupled'] == pytest.approx(-0.1, rel=1e-4)


def test_gradient_accumulation_updates_every_k_steps():
  config = _config(None, optim=dict(grad_accum_steps=2, warmup_epochs=0.0))
  tx, _ = optimizer.create_optimizer(config, steps_per_epoch=10, total_steps=100)
  params = {'backbone': {'w': jnp.ones(2)}}
  grads = {'backbone': {'w': jnp.ones(2)}}
  opt_state = tx.init(params)
  first, opt_state = tx.update(grads, opt_state, params)
  second, _ = tx.update(grads, opt_state, params)
  np.testing.assert_array_equal(first['backbone']['w'], 0.0)
  assert np.all(np.asarray(second['backbone']['w']) < 0)


def test_loss_falls_on_a_tiny_batch():
  config = _config(None, optim=dict(learning_rate=0.05))
  mesh = sharding.create_mesh(config.mesh)
  state, train_step = _setup(config, mesh)
  batch = _put(_batch(), mesh)
  losses_seen = []
  for _ in range(8):
    state, step_metrics = train_step(state, batch)
    losses_seen.append(float(step_metrics.compute()['loss']))
  assert all(b < a for a, b in zip(losses_seen, losses_seen[1:])), losses_seen
  assert losses_seen[-1] < 0.7 * losses_seen[0], losses_seen


@pytest.mark.slow
def test_eight_devices_match_one_device():
  config = _config(None)
  devices = jax.devices()
  assert len(devices) == 8, 'conftest.py should give 8 simulated devices'
  batch = _batch(size=16)
  results = []
  for num_devices in (1, 8):
    config.mesh.data = num_devices
    mesh = sharding.create_mesh(config.mesh)
    assert mesh.size == num_devices
    state, train_step = _setup(config, mesh)
    for _ in range(2):
      state, step_metrics = train_step(state, _put(batch, mesh))
    assert state.params['backbone']['conv1']['kernel'].sharding.mesh.size == num_devices
    results.append((float(step_metrics.compute()['loss']),
                    jax.device_get((state.params, state.batch_stats))))
  (loss_1, trees_1), (loss_8, trees_8) = results
  assert loss_8 == pytest.approx(loss_1, rel=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               trees_1, trees_8)


def test_padded_eval_counts_a_13_example_split_exactly(data_dir):
  config = _config(data_dir, data=dict(eval_batch_size=8))
  config.data.synthetic.num_classes = 13
  config.data.synthetic.test_per_class = 1
  builder = input_pipeline.get_dataset_builder(config)
  assert input_pipeline.num_examples(builder, 'test') == 13
  mesh = sharding.create_mesh(config.mesh)
  run = setup.create(config, 13, mesh, steps_per_epoch=4, total_steps=100)
  model, state = run.model, run.state
  eval_step, metrics_cls = run.eval_step, run.eval_metrics_cls
  eval_ds, num_batches = input_pipeline.create_eval_dataset(config, builder, 'test')
  assert num_batches == 2
  local_batches = list(input_pipeline.as_numpy(eval_ds))
  results = steps.evaluate(
      eval_step, state,
      sharding.to_global_batches(local_batches, sharding.batch_sharding(mesh)), metrics_cls)
  assert results['num_examples'] == 13
  # The same accuracy, computed directly from the 13 real examples alone.
  images = np.concatenate([b['image'][b['mask'] > 0] for b in local_batches])
  labels = np.concatenate([b['label'][b['mask'] > 0] for b in local_batches])
  assert len(labels) == 13
  outputs = model.apply({'params': state.params, 'batch_stats': state.batch_stats},
                        images, train=False)
  for name, scores in {**outputs['branches'], 'combined': outputs['combined']}.items():
    expected = np.mean(np.argmax(scores, -1) == labels)
    assert results[f'top1_{name}'] == pytest.approx(expected), name


def test_checkpoint_round_trip_restores_identical_state(tmp_path):
  config = _config(None)
  mesh = sharding.create_mesh(config.mesh)
  model = models.create_model(config.model, 4)
  tx, _ = optimizer.create_optimizer(config, 4, 100)
  state = create_train_state(model, tx, jax.random.key(0), config.data.image_size, mesh)
  # Non-trivial values everywhere, including the optimizer's momentum.
  state = jax.jit(lambda s: jax.tree.map(lambda x: x + jnp.asarray(3, x.dtype), s))(
      state).replace(step=7)
  saved = jax.device_get(jax.tree.leaves_with_path(state))
  checkpointer = checkpointing.Checkpointer(str(tmp_path), save_every_steps=1, max_to_keep=1)
  assert checkpointer.save(7, state)
  checkpointer.wait_until_finished()
  fresh = create_train_state(model, tx, jax.random.key(1), config.data.image_size, mesh)
  restored = checkpointer.restore(fresh)
  assert checkpointer.latest_step() == 7 and int(restored.step) == 7
  restored_leaves = jax.device_get(jax.tree.leaves_with_path(restored))
  assert [p for p, _ in restored_leaves] == [p for p, _ in saved]
  for (path, expected), (_, actual) in zip(saved, restored_leaves):
    np.testing.assert_array_equal(actual, expected, err_msg=jax.tree_util.keystr(path))
  leaf = restored.params['backbone']['conv1']['kernel']
  assert leaf.sharding == fresh.params['backbone']['conv1']['kernel'].sharding
  checkpointer.close()


def test_the_cpu_initialiser_computes_the_default_compiles_bits():
  """create_train_state compiles with -O2 on a CPU (faster); the state is the same to the bit."""
  config = _config(None)
  mesh = sharding.create_mesh(config.mesh)
  model = models.create_model(config.model, 4)
  tx, _ = optimizer.create_optimizer(config, 4, 100)
  rng = jax.random.key(3)
  fast = create_train_state(model, tx, rng, config.data.image_size, mesh)
  default = jax.jit(train_state._init_fn(model, tx, config.data.image_size))(rng)  # pylint: disable=protected-access
  for (path, want), got in zip(jax.tree.leaves_with_path(default), jax.tree.leaves(fast)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want),
                                  err_msg=jax.tree_util.keystr(path))
  assert len(jax.tree.leaves(fast)) == len(jax.tree.leaves(default)) > 50


def test_bad_config_fields_are_named_before_training(data_dir, tmp_path):
  config = _config(data_dir)
  config.model.use_top_block = False
  config.loss.branch_weights.refined = 2.0
  with pytest.raises(ValueError, match='config.loss.branch_weights.refined=2.0 weighs a branch'):
    trainer.train_and_evaluate(config, str(tmp_path))
  config = _config(data_dir, data=dict(batch_size=12))
  with pytest.raises(ValueError, match='config.data.batch_size=12'):
    trainer.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / 'checkpoints')


@pytest.mark.slow
def test_validation_split_reports_the_best_step(data_dir, tmp_path):
  config = _config(data_dir, data=dict(validation_percent=25), num_train_steps=6,
                   eval_every_epochs=1 / 3)
  results = trainer.train_and_evaluate(config, str(tmp_path))
  # 24 of the 32 training images remain: 3 steps an epoch, an evaluation every step.
  history = ablation_report.read_history(str(tmp_path))
  validation = history['validation/top1_combined']
  assert sorted(validation) == [1, 2, 3, 4, 5, 6]
  best = min(s for s in validation if validation[s] == max(validation.values()))
  assert results['best_validation_step'] == best
  assert results['best_validation_top1_combined'] == pytest.approx(validation[best])
  assert results['test_top1_combined_at_best_validation'] == pytest.approx(
      history['eval/top1_combined'][best])
  assert results['num_examples'] == 16


@pytest.mark.slow
def test_tensorboard_hparams_hold_the_whole_grouped_config(data_dir, tmp_path):
  config = _config(data_dir, num_train_steps=1)
  trainer.train_and_evaluate(config, str(tmp_path))
  hparams = {}
  for path in glob.glob(str(tmp_path / 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == 'hparams':
          data = plugin_data_pb2.HParamsPluginData.FromString(
              value.metadata.plugin_data.content)
          hparams.update({k: v for k, v in data.session_start_info.hparams.items()})
  assert hparams['optim.learning_rate'].number_value == config.optim.learning_rate
  assert hparams['data.batch_size'].number_value == config.data.batch_size
  assert hparams['model.backbone'].string_value == config.model.backbone
  assert hparams['model.mid_level_taps'].string_value == str(config.model.mid_level_taps)
  # Each field once: not also under its old name (compatibility.RENAMED_FIELDS).
  assert hparams['model.use_mid_block'].bool_value and 'model.use_clca' not in hparams
  assert set(hparams) == set(trainer.hparams(config))


@pytest.mark.slow
def test_train_py_trains_then_resumes(data_dir, tmp_path):
  """The command line end to end; the second run finds the final checkpoint."""
  command = [sys.executable, 'train.py', '--config=configs/test.py',
             f'--workdir={tmp_path}', f'--config.data.data_dir={data_dir}',
             '--config.num_train_steps=3', '--config.mesh.data=1']
  first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert first.returncode == 0, first.stderr[-3000:]
  assert 'Test accuracy' in first.stdout
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '3']
  restored = trained_model.load(str(tmp_path))
  assert restored.step == 3 and restored.config.num_train_steps == 3
  assert restored.class_names == [f'species_{i:02d}' for i in range(4)]
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(tmp_path))
  second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert second.returncode == 0, second.stderr[-3000:]
  assert 'already holds the final step 3' in second.stderr
  assert first.stdout.splitlines()[-1] == second.stdout.splitlines()[-1]
  # The switch's old name (compatibility.RENAMED_FIELDS) still sets it.
  other_model = subprocess.run(command + ['--config.model.use_clca=False'], cwd=REPO,
                               capture_output=True, text=True, timeout=600)
  assert other_model.returncode != 0
  assert '(model.use_mid_block: True -> False)' in other_model.stderr
  assert 'Use a new --workdir' in other_model.stderr


@pytest.mark.parametrize('scales,blocks,branches', [
    (2, True, ('block3', 'block4', 'top', 'refined')),
    (3, True, ('block2', 'block3', 'block4', 'top', 'refined')),
    # The plain VGG-16 baseline has no BatchNorm anywhere: no batch_stats at all.
    (2, False, ('top',)),
])
@pytest.mark.slow
def test_clan_on_vgg16_trains_and_evaluates(data_dir, tmp_path, scales, blocks, branches):
  """configs/test.py on VGG-16 (width 4) with configs/vgg16.py's taps, end to end."""
  config = _config(data_dir, num_train_steps=2)
  base.set_backbone(config, 'vgg16', vgg16.TAPS[scales], stage_output='pooled')
  config.model.use_mid_block = config.model.use_top_block = blocks
  if not blocks:
    config.loss.branch_weights = {'top': 1.0}
  results = trainer.train_and_evaluate(config, str(tmp_path))
  for branch in (*branches, 'combined'):
    assert 0.0 <= results[f'top1_{branch}'] <= 1.0, branch
  assert np.isfinite(results['loss'])
  restored = trained_model.load(str(tmp_path))
  assert restored.step == 2 and restored.config.model.backbone == 'vgg16'
  assert set(restored.variables['params']) == {
      'backbone', *(f'head_{b}' for b in branches),
      *(f'{block}_{tap}' for block in ('clca', 'clsa') for tap in branches[:-2] if blocks)}


def test_resuming_may_change_how_the_model_computes_but_not_what_it_is(tmp_path):
  config = test_config.get_config()
  trained_model.save_run_info(str(tmp_path), config, ['a', 'b', 'c', 'd'])
  config.model.dtype = 'bfloat16'
  config.model.remat = 'all'
  config.model.clca.attention_impl = 'reference'
  trained_model.check_same_model(str(tmp_path), config)
  config.model.clsa.norm = 'none'
  with pytest.raises(ValueError, match="model.clsa.norm: 'batchnorm' -> 'none'"):
    trained_model.check_same_model(str(tmp_path), config)
