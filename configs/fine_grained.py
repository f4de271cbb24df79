"""The paper's setting, shared by cub.py, cars.py and aircraft.py.

CLAN 2-scale on ResNet-50 at 448x448. The recipe is not in the available text
of the paper; these are the field's usual values (see CLAN_SPEC.md): resize to
512, random crop 448, flip; SGD momentum 0.9, cosine schedule over 100 epochs,
new layers (CLCA, CLSA, heads) at 10x the backbone's learning rate.
"""
import ml_collections

from clan_jax.models import backbones
from configs import default


def get_config(dataset: str) -> ml_collections.ConfigDict:
  """The paper-setting config for the TFDS dataset named `dataset`."""
  config = default.get_config()
  config.dataset = dataset
  config.resize_size = 512
  config.image_size = 448
  config.cache = False  # decoded 448px datasets do not fit comfortably in memory
  config.batch_size = 32
  config.eval_batch_size = 64

  config.model = default.get_model_config()  # ResNet-50, every spec default

  config.num_epochs = 100.0
  config.learning_rate = 0.01
  config.new_layers_lr_multiplier = 10.0
  config.warmup_epochs = 2.0
  config.weight_decay = 5e-4
  config.weight_decay_mode = 'l2'

  config.eval_every_epochs = 10.0
  config.checkpoint_every_steps = 1000
  return config


def set_backbone(config: ml_collections.ConfigDict, backbone: str, scales: int,
                 **backbone_options) -> None:
  """CLAN `scales`-scale on `backbone` (a name in clan_jax/models/backbones.py).

  The taps are the backbone's defaults for that many scales (its
  BackboneSpec.taps); every branch weighs 1.
  """
  spec = backbones.get(backbone)
  if scales not in spec.taps:
    raise ValueError(f'{backbone} has taps for {sorted(spec.taps)} scales, not {scales}.')
  config.model.backbone = backbone
  config.model.backbone_options = ml_collections.ConfigDict(backbone_options)
  if 'zero_init_residual' not in spec.options:  # VGG has no residual blocks
    config.model.zero_init_residual = False
  config.model.mid_level_taps = spec.taps[scales]
  config.branch_weights = ml_collections.ConfigDict(
      {**{tap: 1.0 for tap in spec.taps[scales]}, 'top': 1.0, 'refined': 1.0})
