"""CLAN on VGG-16, 448px (the paper's Table 6 VGG rows), on CUB, Cars or Aircraft.

  python train.py --config=configs/vgg16.py:cub,2 --config.data.data_dir=PATH --workdir=PATH
  python train.py --config=configs/vgg16.py:aircraft,3 --config.data.data_dir=PATH --workdir=PATH
  python train.py --config=configs/vgg16.py:cars,3,bn ...      # vgg16_bn

The argument is DATASET,SCALES[,bn]: cub | cars | aircraft, 2 | 3. Everything
else is the dataset's ResNet-50 config (configs/base.py). The paper
does not show VGG's maps; the choices (clan_jax/models/vgg.py and
models/backbones.py) are: stage maps after each block's max-pool
(config.model.backbone_options.stage_output='pooled'; 'conv' takes them before
it), L_N = block5 (stride 32), 2-scale taps block3, block4 (strides 8, 16),
3-scale adds block2 (stride 4), matching ResNet-50's layer4 / layer2, layer3 /
layer1.
"""
from configs import aircraft, base, cars, cub

DATASETS = {'cub': cub, 'cars': cars, 'aircraft': aircraft}
# The taps by number of scales: VGG's BackboneSpec.taps (tests/test_layers.py
# checks that they agree).
TAPS = {2: ('block3', 'block4'), 3: ('block2', 'block3', 'block4')}


def get_config(arg: str = 'cub,2'):
  dataset, scales, *variant = arg.split(',')
  if dataset not in DATASETS or scales not in ('2', '3') or variant not in ([], ['bn']):
    raise ValueError(f'configs/vgg16.py:{arg}: expected DATASET,SCALES[,bn] with DATASET '
                     f'one of {tuple(DATASETS)} and SCALES 2 or 3, e.g. configs/vgg16.py:cub,3.')
  config = DATASETS[dataset].get_config()
  base.set_backbone(config, 'vgg16_bn' if variant else 'vgg16', TAPS[int(scales)],
                    stage_output='pooled')
  return config
