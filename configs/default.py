"""Demo: CLAN on the built-in synthetic fine-grained dataset, a few minutes on a CPU.

  python train.py                                   # this config
  python train.py --config=configs/default.py --config.model.use_clsa=False

The paper's setting (configs/base.py) with a smaller model, images and schedule.
"""
import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
  config = base.get_config('clan_synthetic')
  config.data.resize_size = 144
  config.data.image_size = 128
  config.data.cache = True

  config.model.backbone = 'resnet18'
  config.model.backbone_width = 16
  config.model.zero_init_residual = True

  config.optim.learning_rate = 0.1
  config.optim.new_layers_lr_multiplier = 1.0
  config.optim.warmup_epochs = 1.0

  config.num_epochs = 25.0
  config.eval_every_epochs = 5.0
  config.checkpoint.every_steps = 100
  return config
