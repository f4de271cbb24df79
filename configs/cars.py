"""CLAN 2-scale, ResNet-50, 448px on Stanford Cars (the paper's setting).

  python train.py --config=configs/cars.py --config.data_dir=PATH --workdir=PATH
"""
from configs import fine_grained


def get_config():
  return fine_grained.get_config('stanford_cars')
