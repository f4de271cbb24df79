"""Activations CLAN keeps for the backward pass, per dtype and config.model.remat.

  python -m benchmarks.remat_memory --size=448 --batch=32

Counts the residuals of `jax.vjp` of the loss (benchmarks/timing.py,
`saved_activation_bytes`): shapes only, nothing is computed, so it takes
seconds on any machine and shows what rematerialisation removes before XLA
schedules the step.
"""
from absl import app, flags
import jax

from benchmarks.timing import saved_activation_bytes
from clan_jax import models
from clan_jax.models import remat
from configs import base

flags.DEFINE_integer('size', 448, 'Square input resolution.')
flags.DEFINE_integer('batch', 32, 'Batch size.')
flags.DEFINE_string('backbone', 'resnet50', 'torchvision ResNet name.')
flags.DEFINE_integer('width', 64, 'Backbone stem width.')
flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'Compute dtypes.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  print(f'CLAN {FLAGS.backbone} (width {FLAGS.width}), {FLAGS.size}x{FLAGS.size}, batch '
        f'{FLAGS.batch}, 200 classes: GiB kept for the backward pass, JAX {jax.__version__}')
  print(f'{"dtype":<9} ' + ' '.join(f'{"remat=" + mode:>13}' for mode in remat.MODES))
  for dtype in FLAGS.dtypes:
    figures = []
    for mode in remat.MODES:
      config = base.get_model_config()
      config.backbone, config.backbone_width = FLAGS.backbone, FLAGS.width
      config.dtype, config.remat = dtype, mode
      model = models.create_model(config, num_classes=200)
      figures.append(saved_activation_bytes(model, FLAGS.size, FLAGS.batch) / 2**30)
    print(f'{dtype:<9} ' + ' '.join(f'{f:>13.2f}' for f in figures), flush=True)


if __name__ == '__main__':
  jax.config.config_with_absl()
  app.run(main)
