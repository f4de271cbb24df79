"""CLAN 2-scale, ResNet-50, 448px on FGVC-Aircraft (variants) (the paper's setting).

  python train.py --config=configs/aircraft.py --config.data.data_dir=PATH --workdir=PATH
"""
from configs import base


def get_config():
  config = base.get_config('fgvc_aircraft')
  # The fine-grained literature trains on train+val (6,667 images).
  config.data.train_split = 'trainval'
  return config
