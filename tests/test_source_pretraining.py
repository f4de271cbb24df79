"""The demo's source backbone: pretrained once on other species, cached, and fine-tuned from."""
import os

from flax import traverse_util
import jax
import numpy as np
import pytest

from clan_jax.data import synthetic
from clan_jax.experiments import source_pretraining
from clan_jax.models import torchvision_weights
from clan_jax.training import trainer
from clan_jax.user_errors import UserError
from clan_jax.workdir import trained_model
from configs import test as test_config


def _config(data_dir: str):
  config = test_config.get_config()
  config.data.data_dir = data_dir
  config.init.source_pretraining.enabled = True
  config.init.source_pretraining.train_per_class = 2
  config.init.source_pretraining.num_train_steps = 2
  return config


@pytest.mark.slow
def test_pretrains_once_then_fine_tunes_from_the_file(data_dir, tmp_path, monkeypatch):
  config = _config(data_dir)
  resolved = source_pretraining.apply(config)
  path = resolved.init.backbone_weights
  assert path == os.path.join(source_pretraining.cache_dir(config), source_pretraining.WEIGHTS_FILE)
  assert not resolved.init.source_pretraining.enabled and config.init.source_pretraining.enabled
  weights = torchvision_weights.load_weights(path)
  assert (weights.variant, weights.width) == (config.model.backbone, config.model.backbone_width)
  # The source run trained a plain backbone on every source class.
  source = trained_model.load_config(os.path.join(os.path.dirname(path), 'run'))
  assert source.data.synthetic.source
  assert source.data.synthetic.num_classes == synthetic.SOURCE_CLASSES
  assert not (source.model.use_mid_block or source.model.use_top_block)

  # Cached: a second request trains nothing.
  monkeypatch.setattr(trainer, 'train_and_evaluate', lambda *a: pytest.fail('retrained'))
  assert source_pretraining.apply(config).init.backbone_weights == path
  monkeypatch.undo()

  # Fine-tuning starts from the file's backbone, as from converted ImageNet weights.
  fine_tuning = resolved.copy_and_resolve_references()  # mutable: `resolved` is validated
  fine_tuning.num_train_steps = 1
  fine_tuning.optim.learning_rate = 1e-12  # one step that moves nothing measurable
  fine_tuning.optim.weight_decay = 0.0
  trainer.train_and_evaluate(fine_tuning, str(tmp_path / 'fine_tuned'))
  variables = trained_model.load(str(tmp_path / 'fine_tuned')).variables
  kernel = variables['params']['backbone']['conv1']['kernel']
  np.testing.assert_allclose(jax.device_get(kernel), weights.arrays['params/conv1/kernel'],
                             atol=1e-6)
  flat = traverse_util.flatten_dict(variables['params']['backbone'], sep='/')
  assert {f'params/{k}' for k in flat} == {k for k in weights.arrays if k.startswith('params/')}


def test_another_recipe_is_another_backbone(data_dir):
  config = _config(data_dir)
  other = _config(data_dir)
  other.init.source_pretraining.learning_rate = 0.5
  moved = _config(data_dir + '_elsewhere')
  assert source_pretraining.cache_dir(config) != source_pretraining.cache_dir(other)
  # The fine-tuning runs' own seed and length do not make another backbone.
  same = _config(data_dir)
  same.seed, same.num_epochs, same.num_train_steps = 3, 40.0, 1000
  assert source_pretraining.cache_dir(same) == source_pretraining.cache_dir(config)
  assert (os.path.basename(source_pretraining.cache_dir(config))
          == os.path.basename(source_pretraining.cache_dir(moved)))


def test_bad_requests_fail_in_one_line_before_any_work(data_dir, tmp_path):
  config = _config(data_dir)
  config.init.checkpoint = str(tmp_path)
  with pytest.raises(UserError, match=r'at most one.*config.init.checkpoint and '
                                      r'config.init.source_pretraining.enabled'):
    source_pretraining.apply(config)
  config = _config(data_dir)
  config.data.dataset = 'cub_200_2011'
  with pytest.raises(UserError, match="needs config.data.dataset='clan_synthetic'"):
    source_pretraining.apply(config)
  with pytest.raises(UserError, match='source_pretraining.apply'):
    trainer.train_and_evaluate(_config(data_dir), str(tmp_path / 'unresolved'))
  assert not os.path.exists(tmp_path / 'unresolved')
