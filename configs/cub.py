"""CLAN 2-scale, ResNet-50, 448px on CUB-200-2011 (the paper's setting).

  python train.py --config=configs/cub.py --config.data.data_dir=PATH --workdir=PATH
"""
from configs import base


def get_config():
  return base.get_config('cub_200_2011')
