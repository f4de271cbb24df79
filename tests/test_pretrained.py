"""Pretrained weights: torchvision-layout PyTorch ResNets -> Flax, parity, strict checks, init."""
import logging
import os
import subprocess
import sys

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch

from clan_jax import models, sharding
from clan_jax.models import torchvision_weights
from clan_jax.workdir import checkpointing, trained_model
from clan_jax.models import vgg
from clan_jax.models.resnet import STAGE_NAMES
from clan_jax.training import config_validation, initialization, optimizer, setup, trainer
from clan_jax.training.train_state import abstract_train_state
from configs import base
from configs import test as test_config
from configs import vgg16
from tests import torch_resnet, torch_vgg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Relative error max|flax - torch| / max|torch| per output, float32 on both sides.
PARITY_RTOL = 1e-4
# configs/test.py's backbone.
TINY = dict(variant='resnet18', width=4, num_classes=4)


def _save(state_dict, directory, name) -> dict[str, str]:
  """Writes `state_dict` as .pth and .safetensors; returns both paths by suffix."""
  paths = {'pth': os.path.join(directory, f'{name}.pth'),
           'safetensors': os.path.join(directory, f'{name}.safetensors')}
  torch.save(state_dict, paths['pth'])
  safetensors.torch.save_file(state_dict, paths['safetensors'])
  return paths


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  """configs/test.py's backbone as a PyTorch state dict, and its .pth and .safetensors."""
  state_dict = torch_resnet.resnet(**TINY).state_dict()
  return state_dict, _save(state_dict, str(tmp_path_factory.mktemp('tiny')), 'resnet18_w4')


def _numpy_state_dict(state_dict):
  return {k: v.numpy() for k, v in state_dict.items()}


def _config(**init):
  config = test_config.get_config()
  config.init.update(init)
  return config


def _setup(config, num_classes=4):
  """What the trainer builds for `config` (`setup.create`); nothing is compiled yet."""
  return setup.create(config, num_classes, sharding.create_mesh(config.mesh),
                      steps_per_epoch=4, total_steps=100)


@pytest.fixture(scope='module')
def fresh_run():
  """`setup.create` of configs/test.py (4 classes), whose state is freshly
  initialised; compiling its init takes most of a CPU test's time, so tests share it."""
  return _setup(test_config.get_config())


@pytest.fixture
def fresh_state(fresh_run):
  return fresh_run.state


def _abstract_state(config, num_classes=4):
  """Shapes and shardings only: enough for checks that fail before replacing anything."""
  mesh = sharding.create_mesh(config.mesh)
  tx, _ = optimizer.create_optimizer(config, steps_per_epoch=4, total_steps=100)
  return abstract_train_state(models.create_model(config.model, num_classes), tx,
                              config.data.image_size, mesh)


@pytest.mark.parametrize('variant', ['resnet18', 'resnet50'])
def test_converted_weights_reproduce_torch_stages_and_logits(variant, tmp_path):
  """Full-width torchvision architectures, random weights and BN statistics."""
  model = torch_resnet.resnet(variant, width=64, num_classes=10)
  converted = _converted(model.state_dict(), str(tmp_path), variant)
  for weights in converted.values():
    assert weights.variant == variant and weights.width == 64 and weights.num_classes == 10
    assert weights.arrays.keys() == converted['pth'].arrays.keys()
    for key, array in weights.arrays.items():
      np.testing.assert_array_equal(array, converted['pth'].arrays[key], err_msg=key)

  flax_model = models.create_resnet(variant, num_classes=10)
  apply = jax.jit(lambda variables, x: flax_model.apply(variables, x, train=False))
  # 72 and 97 are not multiples of 32: odd sizes on the way down test the padding.
  for resolution in (64, 72, 97):
    images = np.random.default_rng(resolution).normal(
        size=(2, resolution, resolution, 3)).astype(np.float32)
    with torch.no_grad():
      expected = model(torch.from_numpy(images.transpose(0, 3, 1, 2)))
    for source, weights in converted.items():
      with jax.default_matmul_precision('highest'):
        outputs = jax.device_get(apply(weights.variables(), images))
      _assert_parity(outputs, expected, (*STAGE_NAMES, 'logits'), (source, resolution))


def _assert_parity(outputs, expected, names, context):
  """Each named Flax output [B, h, w, C] within PARITY_RTOL of PyTorch's [B, C, h, w]."""
  for name in names:
    reference = expected[name].numpy()
    if reference.ndim == 4:
      reference = reference.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    assert outputs[name].shape == reference.shape, (context, name)
    error = np.abs(outputs[name] - reference).max() / np.abs(reference).max()
    assert error < PARITY_RTOL, (context, name, error)


def _converted(state_dict, directory, name):
  """`state_dict` saved as .pth and .safetensors, each converted; also the .npz round trip."""
  paths = _save(state_dict, directory, name)
  converted = {suffix: torchvision_weights.load_weights(path) for suffix, path in paths.items()}
  npz = os.path.join(directory, f'{name}.npz')
  torchvision_weights.save_npz(npz, converted['pth'])
  converted['npz'] = torchvision_weights.load_weights(npz)
  return converted


@pytest.mark.parametrize('variant', ['vgg16', 'vgg16_bn'])
def test_converted_vgg_reproduces_torch_stages_and_logits(variant, tmp_path):
  """VGG-16 at width 32 (torchvision: 64) with a 64-wide classifier (4096), random
  weights and BN statistics; both stage-map choices."""
  model = torch_vgg.vgg(16, variant.endswith('_bn'), width=32, num_classes=10,
                        classifier_width=64)
  converted = _converted(model.state_dict(), str(tmp_path), variant)
  for weights in converted.values():
    assert weights.variant == variant
    assert weights.options == {'width': 32, 'num_classes': 10, 'classifier_width': 64}
  # 97 is odd all the way down (48, 24, 12, 6, 3): floored pools, a repeating 7x7 pool.
  for resolution in (64, 97):
    images = np.random.default_rng(resolution).normal(
        size=(2, resolution, resolution, 3)).astype(np.float32)
    with torch.no_grad():
      expected = model(torch.from_numpy(images.transpose(0, 3, 1, 2)))
    for stage_output in ('pooled', 'conv'):
      flax_model = converted['pth'].create_model(stage_output=stage_output)
      for source, weights in converted.items():
        with jax.default_matmul_precision('highest'):
          outputs = jax.device_get(jax.jit(
              lambda v, x: flax_model.apply(v, x, train=False))(weights.variables(), images))
        _assert_parity(outputs, {**expected[stage_output], 'logits': expected['logits']},
                       (*vgg.STAGE_NAMES, 'logits'), (source, resolution, stage_output))


def test_vgg_keys_and_variants_are_checked(tmp_path):
  state_dict = _numpy_state_dict(torch_vgg.vgg(16, True, width=4, num_classes=3,
                                               classifier_width=8).state_dict())
  with pytest.raises(torchvision_weights.WeightsMismatchError,
                     match='holds a vgg16_bn, not the requested vgg16'):
    torchvision_weights.convert_state_dict(state_dict, variant='vgg16')
  missing = {k: v for k, v in state_dict.items() if k != 'features.1.running_var'}
  with pytest.raises(torchvision_weights.WeightsMismatchError,
                     match=r'(?s)missing keys \(1\).*batch_stats/features/1/var'):
    torchvision_weights.convert_state_dict(missing)
  # A conv moved by one index (a layout that is not torchvision's).
  shifted = {k.replace('features.40.', 'features.39.'): v for k, v in state_dict.items()}
  with pytest.raises(torchvision_weights.WeightsMismatchError,
                     match=r'(?s)unexpected keys.*params/features/39/kernel'):
    torchvision_weights.convert_state_dict(shifted)
  one_conv_short = {k: v for k, v in state_dict.items() if not k.startswith('features.40.')}
  with pytest.raises(torchvision_weights.WeightsMismatchError,
                     match=r'no torchvision VGG: 12 convs in `features`; known: vgg11 8'):
    torchvision_weights.convert_state_dict(one_conv_short)
  with pytest.raises(torchvision_weights.WeightsMismatchError,
                     match=r'is no torchvision state dict of ResNet or VGG'):
    torchvision_weights.convert_state_dict({'stem.weight': np.zeros((4, 3, 3, 3), np.float32)})
  # A MobileNet's keys begin with 'features.' too, but are no VGG's.
  with pytest.raises(torchvision_weights.WeightsMismatchError,
                     match=r'is no torchvision state dict of ResNet or VGG'):
    torchvision_weights.convert_state_dict(
        {'features.0.0.weight': np.zeros((4, 3, 3, 3), np.float32),
         'features.1.conv.0.0.weight': np.zeros((4, 1, 3, 3), np.float32)})
  # Without the classifier (a feature extractor's state dict) it converts as well.
  features_only = {k: v for k, v in state_dict.items() if k.startswith('features.')}
  weights = torchvision_weights.convert_state_dict(features_only)
  assert weights.options == {'width': 4, 'num_classes': None}


def test_clan_on_vgg16_starts_from_converted_weights(tmp_path):
  config = test_config.get_config()
  base.set_backbone(config, 'vgg16_bn', vgg16.TAPS[2])
  run = _setup(config)
  model, state = run.model, run.state
  torch_model = torch_vgg.vgg(16, True, width=4, num_classes=3, classifier_width=8)
  paths = _save(torch_model.state_dict(), str(tmp_path), 'vgg16_bn_w4')
  config.init.backbone_weights = paths['safetensors']
  state = initialization.initialize(state, config)
  images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  _, intermediates = model.apply(
      {'params': state.params, 'batch_stats': state.batch_stats}, images, train=False,
      capture_intermediates=True, mutable=['intermediates'])
  features = intermediates['intermediates']['backbone']['__call__'][0]
  with torch.no_grad():
    expected = torch_model(torch.from_numpy(images.transpose(0, 3, 1, 2)))
  _assert_parity(features, expected['pooled'], vgg.STAGE_NAMES, 'CLAN backbone')


def test_command_line_converts_a_pth(tiny, tmp_path):
  state_dict, paths = tiny
  out = str(tmp_path / 'tiny.npz')
  result = subprocess.run(
      [sys.executable, '-m', 'clan_jax.cli.convert_weights', f'--src={paths["pth"]}',
       f'--out={out}'], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'resnet18 of width 4' in result.stdout
  weights = torchvision_weights.load_weights(out, variant='resnet18')
  direct = torchvision_weights.convert_state_dict(_numpy_state_dict(state_dict))
  assert weights.arrays.keys() == direct.arrays.keys()
  for key in direct.arrays:
    np.testing.assert_array_equal(weights.arrays[key], direct.arrays[key], err_msg=key)


def test_bfloat16_safetensors_convert_to_float32(tiny, tmp_path):
  state_dict, _ = tiny
  path = str(tmp_path / 'bfloat16.safetensors')
  safetensors.torch.save_file({k: v.bfloat16() for k, v in state_dict.items()}, path)
  weights = torchvision_weights.load_weights(path)  # numpy reads bfloat16 through ml_dtypes (JAX's)
  kernel = state_dict['conv1.weight'].bfloat16().float().numpy().transpose(2, 3, 1, 0)
  assert weights.arrays['params/conv1/kernel'].dtype == np.float32
  np.testing.assert_array_equal(weights.arrays['params/conv1/kernel'], kernel)


def test_wrapped_and_data_parallel_state_dicts_convert(tiny, tmp_path):
  state_dict, _ = tiny
  path = str(tmp_path / 'wrapped.pth')
  torch.save({'epoch': 3, 'state_dict': {f'module.{k}': v for k, v in state_dict.items()}},
             path)
  wrapped = torchvision_weights.load_weights(path)
  direct = torchvision_weights.convert_state_dict(_numpy_state_dict(state_dict))
  assert wrapped.arrays.keys() == direct.arrays.keys()
  for key in direct.arrays:
    np.testing.assert_array_equal(wrapped.arrays[key], direct.arrays[key], err_msg=key)


def test_clan_from_converted_weights_starts_as_the_backbone_then_trains(
    tiny, fresh_run, fresh_state, caplog):
  _, paths = tiny
  caplog.set_level(logging.INFO)
  config = _config(backbone_weights=paths['safetensors'])
  state = initialization.initialize(fresh_state, config)
  # torchvision's 102 ResNet-18 tensors (without num_batches_tracked) less fc's 2.
  assert f'Initialised 100 arrays (backbone) from {paths["safetensors"]}' in caplog.text
  assert "freshly initialised: ['clca_layer2', 'clca_layer3', 'clsa_layer2'" in caplog.text
  weights = torchvision_weights.load_weights(paths['safetensors'])
  for key, array in weights.arrays.items():
    if not key.startswith('params/fc/'):
      kind, rest = key.split('/', 1)
      leaf = traverse_util.flatten_dict(getattr(state, kind)['backbone'], sep='/')[rest]
      np.testing.assert_array_equal(leaf, array, err_msg=key)
      assert leaf.sharding == fresh_state.params['backbone']['conv1']['kernel'].sharding
  # Everything outside the backbone is untouched.
  for name in set(fresh_state.params) - {'backbone'}:
    jax.tree.map(np.testing.assert_array_equal, state.params[name], fresh_state.params[name])

  model, mesh = fresh_run.model, sharding.create_mesh(config.mesh)
  images = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype(np.float32)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  _, intermediates = model.apply(variables, images, train=False,
                                 capture_intermediates=True, mutable=['intermediates'])
  intermediates = intermediates['intermediates']
  features = intermediates['backbone']['__call__'][0]
  standalone = models.create_resnet('resnet18', width=4, num_classes=4).apply(
      weights.variables(), images, train=False)
  np.testing.assert_array_equal(features['layer4'], standalone['layer4'])
  for tap in config.model.mid_level_taps:  # zero-initialised CLCA is the identity
    np.testing.assert_array_equal(intermediates[f'clca_{tap}']['__call__'][0], features[tap])

  train_step = fresh_run.train_step
  batch = jax.device_put({'image': images, 'label': np.arange(8, dtype=np.int32) % 4},
                         sharding.batch_sharding(mesh))
  state = jax.tree.map(jnp.copy, state)  # the step donates it; the fixture is shared
  for _ in range(3):
    state, metrics = train_step(state, batch)
    assert np.isfinite(float(metrics.compute()['loss']))
  assert int(state.step) == 3
  assert not np.array_equal(state.params['backbone']['conv1']['kernel'],
                            weights.arrays['params/conv1/kernel'])


def test_checkpoint_initialises_every_variable(fresh_state, tmp_path):
  config = test_config.get_config()
  trained = jax.jit(lambda s: jax.tree.map(lambda x: x + jnp.asarray(3, x.dtype), s))(
      fresh_state)
  workdir = str(tmp_path / 'trained')
  trained_model.save_run_info(workdir, config, ['a', 'b', 'c', 'd'])
  checkpointer = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                            save_every_steps=1, max_to_keep=1)
  checkpointer.save(5, trained)
  checkpointer.wait_until_finished()
  checkpointer.close()

  loaded = initialization.initialize(fresh_state, _config(checkpoint=workdir))
  assert int(loaded.step) == 0
  jax.tree.map(np.testing.assert_array_equal, (loaded.params, loaded.batch_stats),
               (trained.params, trained.batch_stats))
  # Another number of classes: the heads do not fit, and are named.
  with pytest.raises(torchvision_weights.WeightsMismatchError,
                     match=r'(?s)shape mismatches.*params/head_top/fc/kernel: '
                           r'file \(32, 4\), model \(32, 5\)'):
    initialization.initialize(_abstract_state(config, num_classes=5), _config(checkpoint=workdir))
  with pytest.raises(FileNotFoundError, match='not a train.py workdir'):
    initialization.initialize(fresh_state, _config(checkpoint=str(tmp_path)))


# --- Errors --------------------------------------------------------------------------


def test_missing_unexpected_and_mis_shaped_keys_are_listed(tiny):
  state_dict, _ = tiny
  state_dict = _numpy_state_dict(state_dict)
  missing = dict(state_dict)
  del missing['layer1.0.bn1.running_var'], missing['layer4.1.conv2.weight']
  with pytest.raises(torchvision_weights.WeightsMismatchError,
                     match=r'(?s)missing keys \(2\).*batch_stats/layer1/0/bn1/var.*'
                           r'params/layer4/1/conv2/kernel'):
    torchvision_weights.convert_state_dict(missing)
  unexpected = {**state_dict, 'layer1.0.se.fc.weight': np.zeros((4, 4), np.float32),
                'layer2.0.attn.scale': np.zeros(4, np.float32)}
  with pytest.raises(torchvision_weights.WeightsMismatchError,
                     match=r"unexpected keys.*'layer2.0.attn.scale'"):
    torchvision_weights.convert_state_dict(unexpected)
  del unexpected['layer2.0.attn.scale']
  with pytest.raises(torchvision_weights.WeightsMismatchError,
                     match='unexpected keys .1.:\n  params/layer1/0/se/fc/kernel'):
    torchvision_weights.convert_state_dict(unexpected)
  mis_shaped = {**state_dict, 'layer1.0.conv1.weight': np.zeros((4, 4, 5, 5), np.float32)}
  with pytest.raises(torchvision_weights.WeightsMismatchError,
                     match=r'params/layer1/0/conv1/kernel: file \(5, 5, 4, 4\), '
                           r'model \(3, 3, 4, 4\)'):
    torchvision_weights.convert_state_dict(mis_shaped)


def test_depth_and_width_mismatches_stop_training_before_it_starts(tiny, data_dir, tmp_path):
  state_dict, paths = tiny
  with pytest.raises(torchvision_weights.WeightsMismatchError, match='holds a resnet18, not the '
                     'requested resnet50'):
    torchvision_weights.load_weights(paths['safetensors'], variant='resnet50')
  one_block_short = {k: v.numpy() for k, v in state_dict.items() if 'layer4.1.' not in k}
  with pytest.raises(torchvision_weights.WeightsMismatchError,
                     match=r'no torchvision ResNet: \(2, 2, 2, 1\) basic blocks'):
    torchvision_weights.convert_state_dict(one_block_short)
  config = _config(backbone_weights=paths['safetensors'])
  config.data.data_dir = data_dir
  config.model.backbone = 'resnet34'
  with pytest.raises(torchvision_weights.WeightsMismatchError,
                     match="holds a resnet18 backbone, but config.model.backbone='resnet34'"):
    trainer.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / 'checkpoints')
  config = _config(backbone_weights=paths['safetensors'])
  config.model.backbone_width = 8
  with pytest.raises(torchvision_weights.WeightsMismatchError,
                     match=r'(?s)width 8.*params/backbone/conv1/kernel: '
                           r'file \(7, 7, 3, 4\), model \(7, 7, 3, 8\)'):
    initialization.initialize(_abstract_state(config), config)


def test_missing_file_and_two_sources_are_errors(tiny, tmp_path):
  _, paths = tiny
  for name in ('absent.npz', 'absent.safetensors', 'absent.pth'):
    with pytest.raises(FileNotFoundError, match=name):
      torchvision_weights.load_weights(str(tmp_path / name))
  config = _config(backbone_weights=paths['pth'], checkpoint=str(tmp_path))
  with pytest.raises(ValueError, match='at most one'):
    config_validation.validate(config)


def test_pth_without_torch_says_what_to_install(tiny, monkeypatch):
  _, paths = tiny
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` now fails
  with pytest.raises(ImportError, match=r'(?s)pip install torch.*\.safetensors'):
    torchvision_weights.load_weights(paths['pth'])
  assert torchvision_weights.load_weights(paths['safetensors']).variant == 'resnet18'


_EXECUTED = []


def _mark_executed():
  _EXECUTED.append(True)


class _Payload:
  """Unpickling this would call a function: what a malicious checkpoint does."""

  def __reduce__(self):
    return _mark_executed, ()


def test_pickled_objects_are_refused_not_executed(tiny, tmp_path):
  state_dict, _ = tiny
  path = str(tmp_path / 'malicious.pth')
  torch.save({'model': dict(state_dict), 'payload': _Payload()}, path)
  with pytest.raises(ValueError, match=r'(?s)not loaded.*arbitrary code.*weights_only'):
    torchvision_weights.load_weights(path)
  assert not _EXECUTED
