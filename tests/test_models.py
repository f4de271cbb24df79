"""Shapes, equations and switches of the ResNet backbone, CLCA, CLSA and CLAN."""
import functools
from typing import Any

from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags
import pytest

from clan_jax import models
from clan_jax.models import attention, backbones, blocks, vgg
from clan_jax.models.block_spec import BlockSpec
from clan_jax.models.clca import CLCA
from clan_jax.models.clsa import CLSA
from configs import base, vgg16

# torchvision's parameter counts (weights and biases, BatchNorm running stats
# excluded) with the 1000-class `fc` head.
TORCHVISION_PARAM_COUNTS = {
    'resnet18': 11_689_512,
    'resnet34': 21_797_672,
    'resnet50': 25_557_032,
    'resnet101': 44_549_160,
    'resnet152': 60_192_808,
}


# torchvision's VGG parameter counts with the 1000-class classifier.
TORCHVISION_VGG_PARAM_COUNTS = {
    'vgg11': 132_863_336, 'vgg11_bn': 132_868_840,
    'vgg13': 133_047_848, 'vgg13_bn': 133_053_736,
    'vgg16': 138_357_544, 'vgg16_bn': 138_365_992,
    'vgg19': 143_667_240, 'vgg19_bn': 143_678_248,
}


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize('variant', sorted(TORCHVISION_PARAM_COUNTS))
def test_resnet_matches_torchvision_layout(variant):
  resnet = models.create_resnet(variant, num_classes=1000)
  images = jax.ShapeDtypeStruct((2, 448, 448, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: resnet.init(jax.random.key(0), x, train=False),
                             images)
  assert _count(variables['params']) == TORCHVISION_PARAM_COUNTS[variant]
  features = jax.eval_shape(lambda v, x: resnet.apply(v, x, train=False),
                            variables, images)
  e = 4 if variant in ('resnet50', 'resnet101', 'resnet152') else 1
  assert features['layer1'].shape == (2, 112, 112, 64 * e)
  assert features['layer2'].shape == (2, 56, 56, 128 * e)
  assert features['layer3'].shape == (2, 28, 28, 256 * e)
  assert features['layer4'].shape == (2, 14, 14, 512 * e)
  assert features['logits'].shape == (2, 1000)
  # torchvision state-dict keys map one to one, e.g. layer2.0.downsample.0.weight.
  assert 'downsample_conv' in variables['params']['layer2']['0']
  assert 'downsample_conv' not in variables['params']['layer2']['1']


@pytest.mark.parametrize('variant', sorted(TORCHVISION_VGG_PARAM_COUNTS))
def test_vgg_matches_torchvision_layout(variant):
  spec = backbones.get(variant)
  images = jax.ShapeDtypeStruct((2, 448, 448, 3), jnp.float32)
  for stage_output, strides in (('pooled', (2, 4, 8, 16, 32)), ('conv', (1, 2, 4, 8, 16))):
    vgg = spec.create(width=64, num_classes=1000, stage_output=stage_output)
    variables = jax.eval_shape(lambda x: vgg.init(jax.random.key(0), x, train=False),
                               images)
    assert _count(variables['params']) == TORCHVISION_VGG_PARAM_COUNTS[variant]
    features = jax.eval_shape(lambda v, x: vgg.apply(v, x, train=False), variables, images)
    for stage, stride, channels in zip(spec.stage_names, strides, (64, 128, 256, 512, 512)):
      assert features[stage].shape == (2, 448 // stride, 448 // stride, channels), stage
    assert features['logits'].shape == (2, 1000)
  # torchvision's indices: features.0 conv, (features.1 BN), ..., classifier.0 / 3 / 6.
  params = variables['params']
  assert set(params['classifier']) == {'0', '3', '6'}
  assert ('1' in params['features']) == variant.endswith('_bn')
  assert ('batch_stats' in variables) == variant.endswith('_bn')


def test_adaptive_avg_pool_matches_torch():
  torch = pytest.importorskip('torch')
  x = np.random.default_rng(0).normal(size=(2, 10, 13, 3)).astype(np.float32)
  for size in ((7, 7), (4, 5), (20, 3)):
    expected = torch.nn.functional.adaptive_avg_pool2d(
        torch.from_numpy(x.transpose(0, 3, 1, 2)), size).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(vgg.adaptive_avg_pool(jnp.asarray(x), size), expected,
                               rtol=1e-6, atol=1e-6)


def _clca_inputs(key, batch=2, mid_hw=8, top_hw=4, mid_c=12, top_c=20):
  k1, k2 = jax.random.split(key)
  mid = jax.random.normal(k1, (batch, mid_hw, mid_hw, mid_c))
  top = jax.random.normal(k2, (batch, top_hw, top_hw, top_c))
  return mid, top


def _randomize(variables, key):
  """Random values for every leaf (BatchNorm variances kept positive)."""
  leaves, treedef = jax.tree.flatten(variables)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(
      treedef, [jnp.abs(jax.random.normal(k, x.shape)) + 0.5 for k, x in zip(keys, leaves)])


def _clca_by_the_figure(params, stats, mid, top, normalization, eps=1e-5):
  """Figure 2 step by step in float64 numpy, Up *before* W_g as drawn."""
  mid, top = np.asarray(mid, np.float64), np.asarray(top, np.float64)
  b, h, w, c = mid.shape
  conv = lambda x, name: (x @ np.asarray(params[name]['kernel'][0, 0], np.float64)
                          + np.asarray(params[name]['bias'], np.float64))
  up = np.asarray(jax.image.resize(top, (b, h, w, top.shape[-1]), 'bilinear'), np.float64)
  f = conv(up, 'w_g') + conv(mid, 'w_l')
  theta = conv(f, 'w_theta').reshape(b, h * w, -1)
  phi = conv(f, 'w_phi').reshape(b, h * w, -1)
  value = conv(mid, 'w_k').reshape(b, h * w, -1)
  affinity = theta @ phi.transpose(0, 2, 1)
  if normalization == 'softmax':
    affinity = np.exp(affinity - affinity.max(-1, keepdims=True))
    affinity /= affinity.sum(-1, keepdims=True)
  else:
    affinity /= h * w
  y = conv((affinity @ value).reshape(b, h, w, -1), 'w_y')
  bn = params['bn_y']
  y = ((y - np.asarray(stats['bn_y']['mean'])) / np.sqrt(np.asarray(stats['bn_y']['var']) + eps)
       * np.asarray(bn['scale']) + np.asarray(bn['bias']))
  return mid + y


@pytest.mark.parametrize('normalization', ['softmax', 'mean'])
@pytest.mark.parametrize('impl', ['auto', 'blockwise', 'reference'])
def test_clca_equals_the_figure(normalization, impl):
  mid, top = _clca_inputs(jax.random.key(0))
  clca = CLCA(normalization=normalization, attention_impl=impl)
  variables = _randomize(clca.init(jax.random.key(1), mid, top, train=False),
                         jax.random.key(2))
  # Small weights keep the softmax away from one-hot, so it is really tested.
  variables = jax.tree.map(lambda x: x * 0.3, variables)
  with jax.default_matmul_precision('highest'):
    out = clca.apply(variables, mid, top, train=False)
  expected = _clca_by_the_figure(variables['params'], variables['batch_stats'], mid, top,
                                 normalization)
  assert out.shape == mid.shape
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('normalization', ['softmax', 'mean'])
@pytest.mark.parametrize('scaled', [False, True])
def test_blockwise_attention_equals_the_reference_in_values_and_gradients(
    normalization, scaled):
  # 70 positions in blocks of at most 16: five blocks of 16, the last one padded.
  q, k, v = 2 * jax.random.normal(jax.random.key(0), (3, 2, 70, 12))
  cotangent = jax.random.normal(jax.random.key(1), (2, 70, 12))

  def loss(impl, q, k, v):
    out = attention.spatial_attention(q, k, v, normalization=normalization,
                                      scaled=scaled, implementation=impl, block_size=16)
    return jnp.sum(out * cotangent)

  with jax.default_matmul_precision('highest'):
    results = {impl: jax.value_and_grad(functools.partial(loss, impl), argnums=(0, 1, 2))(
        q, k, v) for impl in ('blockwise', 'auto', 'reference')}
  for impl in ('blockwise', 'auto'):
    np.testing.assert_allclose(results[impl][0], results['reference'][0], rtol=1e-5)
    for grad, expected in zip(results[impl][1], results['reference'][1]):
      np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-4)


def test_blockwise_attention_in_bfloat16_stays_close_to_float32():
  q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 50, 8))
  run = lambda impl, dtype: attention.spatial_attention(
      q.astype(dtype), k.astype(dtype), v.astype(dtype), implementation=impl,
      block_size=16)
  out = run('blockwise', jnp.bfloat16)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(jnp.float32), run('reference', jnp.float32),
                             atol=0.05)


def test_blockwise_attention_never_builds_the_n_by_n_matrix():
  """Compiled forward+backward temporaries: reference grows as N^2, blockwise as N."""
  def temp_bytes(impl, n):
    q = jax.ShapeDtypeStruct((1, n, 32), jnp.float32)
    grad = jax.jit(jax.grad(lambda q: jnp.sum(attention.spatial_attention(
        q, q, q, implementation=impl, block_size=128))))
    return grad.lower(q).compile().memory_analysis().temp_size_in_bytes

  n_by_n = 2048 * 2048 * 4
  assert temp_bytes('reference', 2048) > n_by_n
  assert temp_bytes('blockwise', 2048) < n_by_n / 8
  # Doubling N doubles (not quadruples) the blockwise temporaries, give or take.
  assert temp_bytes('blockwise', 4096) < 3 * temp_bytes('blockwise', 2048)


def test_clca_starts_as_identity():
  mid, top = _clca_inputs(jax.random.key(0))
  clca = CLCA()
  variables = clca.init(jax.random.key(1), mid, top, train=False)
  out, _ = clca.apply(variables, mid, top, train=True, mutable=['batch_stats'])
  np.testing.assert_array_equal(out, mid)


def test_clsa_applies_the_downsampled_map_to_the_top_map():
  mid, top = _clca_inputs(jax.random.key(0))
  for residual in (False, True):
    clsa = CLSA(residual=residual)
    variables = clsa.init(jax.random.key(1), mid, top, train=False)
    out, state = clsa.apply(variables, mid, top, train=False, mutable=['intermediates'])
    (attention_map,) = state['intermediates']['attention']
    assert attention_map.shape == (2, 8, 8, 1)
    assert jnp.all((attention_map > 0) & (attention_map < 1))
    # avg pooling 8x8 -> 4x4 is the mean over 2x2 windows.
    pooled = attention_map.reshape(2, 4, 2, 4, 2, 1).mean(axis=(2, 4))
    expected = top * pooled + (top if residual else 0)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_clsa_rejects_indivisible_sizes_with_a_clear_error():
  mid = jnp.ones((1, 7, 7, 4))
  top = jnp.ones((1, 4, 4, 4))
  with pytest.raises(ValueError, match='config.data.image_size'):
    CLSA().init(jax.random.key(0), mid, top, train=False)


@pytest.mark.parametrize('norm', ['batchnorm', 'none'])
def test_clsa_gate_with_batchnorm_ignores_the_scale_of_its_input(norm):
  # CLCA rescales L̂_s as it trains; the normalised gate must not follow that
  # scale into the sigmoid's flat tails (docs/ablation_study.md).
  mid, top = _clca_inputs(jax.random.key(0))
  clsa = CLSA(norm=norm)
  variables = clsa.init(jax.random.key(1), mid, top, train=False)

  def gate(scale):
    _, state = clsa.apply(variables, scale * mid, top, train=True,
                          mutable=['intermediates', 'batch_stats'])
    return state['intermediates']['attention'][0]

  if norm == 'batchnorm':
    np.testing.assert_allclose(gate(100.0), gate(1.0), atol=1e-4)
    assert 0.2 < float(jnp.std(gate(100.0))) < 0.3  # sigmoid of unit-variance logits
  else:
    assert float(jnp.mean(jnp.abs(gate(100.0) - 0.5))) > 0.45  # saturated


def _tiny_model_config(**switches):
  m = base.get_model_config()
  m.backbone, m.backbone_width = 'resnet18', 4
  m.update(switches)
  return m


@pytest.mark.parametrize('merge', ['concat', 'sum'])
@pytest.mark.parametrize('combine', ['mean_softmax', 'sum_logits'])
def test_clan_outputs(merge, combine):
  model = models.create_model(
      _tiny_model_config(refined_top_merge=merge, combine=combine), num_classes=5)
  images = jax.random.normal(jax.random.key(0), (3, 64, 64, 3))
  variables = model.init(jax.random.key(1), images, train=False)
  outputs = model.apply(variables, images, train=False)
  assert set(outputs['branches']) == {'layer2', 'layer3', 'top', 'refined'}
  for logits in outputs['branches'].values():
    assert logits.shape == (3, 5) and logits.dtype == jnp.float32
  assert outputs['combined'].shape == (3, 5)
  stacked = jnp.stack(list(outputs['branches'].values()))
  expected = (jax.nn.softmax(stacked).mean(0) if combine == 'mean_softmax'
              else stacked.sum(0))
  np.testing.assert_allclose(outputs['combined'], expected, rtol=1e-6)
  # The refined map's head sees both scales' channels when concatenated.
  head_inputs = variables['params']['head_refined']['fc']['kernel'].shape[0]
  assert head_inputs == (2 if merge == 'concat' else 1) * 8 * 4


@pytest.mark.parametrize('mid,top,expected_modules', [
    (False, False, {'backbone', 'head_top'}),
    (True, False, {'backbone', 'clca_layer2', 'clca_layer3', 'head_layer2',
                   'head_layer3', 'head_top'}),
    (False, True, {'backbone', 'clsa_layer2', 'clsa_layer3', 'head_top',
                   'head_refined'}),
    (True, True, {'backbone', 'clca_layer2', 'clca_layer3', 'clsa_layer2',
                  'clsa_layer3', 'head_layer2', 'head_layer3', 'head_top',
                  'head_refined'}),
])
def test_ablation_switches_change_the_parameter_tree(mid, top, expected_modules):
  config = _tiny_model_config(use_mid_block=mid, use_top_block=top)
  model = models.create_model(config, num_classes=3)
  images = jnp.zeros((1, 64, 64, 3))
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                             images)
  assert set(variables['params']) == expected_modules
  outputs = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
  assert tuple(sorted(outputs['branches'])) == tuple(sorted(
      models.branch_names(config.mid_level_taps, mid, top)))


def test_three_scale_taps():
  config = _tiny_model_config(mid_level_taps=('layer1', 'layer2', 'layer3'))
  model = models.create_model(config, num_classes=3)
  variables = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False), jnp.zeros((1, 64, 64, 3)))
  assert {'clca_layer1', 'clsa_layer1', 'head_layer1'} <= set(variables['params'])


def test_bfloat16_compute_keeps_float32_params_statistics_and_logits():
  model = models.create_model(_tiny_model_config(dtype='bfloat16'), num_classes=3)
  images = jnp.ones((2, 64, 64, 3))
  variables = model.init(jax.random.key(0), images, train=False)
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype('float32')}
  outputs, updates = model.apply(variables, images, train=True, mutable=['batch_stats'])
  assert {x.dtype for x in jax.tree.leaves(updates)} == {jnp.dtype('float32')}
  assert outputs['combined'].dtype == jnp.float32


@pytest.mark.parametrize('field,value', [
    ('backbone', 'resnet51'), ('mid_level_taps', ('layer4',)),
    ('clca.normalization', 'sigmoid'), ('clsa.kernel_size', 4),
    ('refined_top_merge', 'max'), ('combine', 'vote'), ('dtype', 'int8'),
    ('top_stage', 'layer5'), ('mid_block', 'non_local'), ('top_block', 'cbam'),
])
def test_bad_model_fields_are_named(field, value):
  config = _tiny_model_config()
  if '.' in field:
    block, name = field.split('.')
    config[block][name] = value
  else:
    config[field] = value
  with pytest.raises(ValueError, match=f'config.model.{field}'):
    models.validate_model_config(config)



def test_taps_and_backbone_options_are_checked_against_the_backbone():
  config = _tiny_model_config(mid_level_taps=('layer2', 'layer4'))
  with pytest.raises(ValueError, match=r"config.model.mid_level_taps='layer4' is not one of "
                     r"\('layer1', 'layer2', 'layer3'\)"):
    models.validate_model_config(config)
  # A lower top-level map leaves fewer stages below it to tap.
  config = _tiny_model_config(top_stage='layer3')
  with pytest.raises(ValueError, match=r"mid_level_taps='layer3' is not one of "
                     r"\('layer1', 'layer2'\)"):
    models.validate_model_config(config)
  config = _tiny_model_config()
  config.backbone_options = {'stage_output': 'conv'}
  with pytest.raises(ValueError, match=r"config.model.backbone_options.stage_output is not an "
                     r"option of resnet18; its options: \('zero_init_residual',\)"):
    models.validate_model_config(config)


def test_top_stage_chooses_the_top_level_map():
  config = _tiny_model_config(top_stage='layer3', mid_level_taps=('layer1', 'layer2'))
  model = models.create_model(config, num_classes=3)
  variables = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False), jnp.zeros((1, 64, 64, 3)))
  # L_N is layer3's map (4 * width channels), so the top head reads 16 channels.
  assert variables['params']['head_top']['fc']['kernel'].shape == (16, 3)
  assert {'clca_layer1', 'clsa_layer2'} <= set(variables['params'])


class _GatedMid(nn.Module):
  """A stand-in mid-level block: L_s * sigmoid(a) with one learned scalar a."""

  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, mid, top, train):
    del top, train
    gate = self.param('gate', nn.initializers.zeros, (), self.param_dtype)
    return mid * jax.nn.sigmoid(gate)


def test_a_registered_block_replaces_clca_by_name(monkeypatch):
  monkeypatch.setitem(blocks.MID_LEVEL_BLOCKS, 'gated', BlockSpec(_GatedMid, rules=()))
  config = _tiny_model_config(mid_block='gated')
  config.gated = {}
  model = models.create_model(config, num_classes=3)
  images = jnp.ones((1, 64, 64, 3))
  variables = model.init(jax.random.key(0), images, train=False)
  assert {'gated_layer2', 'gated_layer3', 'clsa_layer2', 'head_layer2'} <= set(
      variables['params'])
  assert not any(name.startswith('clca') for name in variables['params'])
  assert model.apply(variables, images, train=False)['combined'].shape == (1, 3)


@pytest.mark.parametrize('scales,taps', [(2, ('block3', 'block4')),
                                         (3, ('block2', 'block3', 'block4'))])
def test_clan_on_vgg16(scales, taps):
  """configs/vgg16.py's model at width 4: VGG's blocks as taps, block5 as L_N."""
  config = vgg16.get_config(f'cub,{scales}').model
  config.backbone_width = 4
  assert tuple(config.mid_level_taps) == taps
  model = models.create_model(config, num_classes=5)
  images = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
  variables = model.init(jax.random.key(1), images, train=False)
  assert set(variables['params']) == {
      'backbone', *(f'{block}_{tap}' for block in ('clca', 'clsa', 'head') for tap in taps),
      'head_top', 'head_refined'}
  assert 'backbone' not in variables['batch_stats']  # vgg16 has no BatchNorm
  outputs = model.apply(variables, images, train=False)
  assert tuple(outputs['branches']) == (*taps, 'top', 'refined')
  for logits in outputs['branches'].values():
    assert logits.shape == (2, 5)
  # L_N is block5's pooled map (8 * width channels); refined concatenates one per tap.
  assert variables['params']['head_top']['fc']['kernel'].shape == (32, 5)
  assert variables['params']['head_refined']['fc']['kernel'].shape == (32 * scales, 5)
  widths = {'block2': 8, 'block3': 16, 'block4': 32}
  for tap in taps:  # CLCA's inner width is half the tap's channels
    assert variables['params'][f'clca_{tap}']['w_k']['kernel'].shape == (
        1, 1, widths[tap], widths[tap] // 2)


def test_vgg_without_residual_blocks_refuses_zero_init_residual():
  config = vgg16.get_config('cub,2').model
  config.zero_init_residual = True
  with pytest.raises(ValueError, match=r"config.model.zero_init_residual=True needs a "
                     r"residual backbone; config.model.backbone='vgg16' has none"):
    models.validate_model_config(config)


def test_vgg16_config_file_takes_dataset_and_scales_on_the_command_line():
  """`--config=configs/vgg16.py:DATASET,SCALES[,bn]`, as train.py parses it."""
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', flag_values=flag_values, lock_config=True)
  flag_values(['train.py', '--config=configs/vgg16.py:aircraft,3,bn'])
  config = flag_values.config
  assert config.data.dataset == 'fgvc_aircraft' and config.data.train_split == 'trainval'
  assert config.model.backbone == 'vgg16_bn' and config.data.image_size == 448
  assert tuple(config.model.mid_level_taps) == ('block2', 'block3', 'block4')
  assert set(config.loss.branch_weights) == {'block2', 'block3', 'block4', 'top', 'refined'}
  assert config.model.backbone_options.stage_output == 'pooled'
  models.validate_model_config(config.model)
  with pytest.raises(ValueError, match=r'configs/vgg16.py:cub,4: expected DATASET,SCALES'):
    vgg16.get_config('cub,4')
