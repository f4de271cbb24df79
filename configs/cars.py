"""CLAN 2-scale, ResNet-50, 448px on Stanford Cars (the paper's setting).

  python train.py --config=configs/cars.py --config.data.data_dir=PATH --workdir=PATH
"""
from configs import base


def get_config():
  return base.get_config('stanford_cars')
