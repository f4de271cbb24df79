"""Train-step speed and memory of CLAN next to its plain backbone, in one run.

  python -m benchmarks.train_step --image_size=224 --batch_size=8
  python -m benchmarks.train_step --backbone=vgg16 --scales=3 --image_size=224 --batch_size=8
  python -m benchmarks.train_step --backbone=resnet50 --image_size=448 --batch_size=32 --dtype=bfloat16

For each model (the backbone with CLCA and CLSA off, then CLAN with every spec
default and the backbone's --scales taps) it compiles the real sharded train step of train.py, runs
--warmup steps, times --steps steps, and prints: compile time, mean step time,
images per second, XLA's memory estimate of the compiled step (arguments +
temporaries), the peak memory the device reports (GPU/TPU) or the
process's peak resident memory so far (CPU, which has no per-device count),
and what the train step's diagnostics cost: their reductions compiled alone
(an upper bound of their share of the step) and the loop's merge of one step's
metrics (timing.StepTiming).
"""
from absl import app, flags
import jax

from benchmarks.timing import time_train_step
from clan_jax.models import backbones
from configs import base

flags.DEFINE_string('backbone', 'resnet50', 'A name in clan_jax/models/backbones.py.')
flags.DEFINE_integer('scales', 2, "CLAN's number of scales: the backbone's default taps "
                     'for 2 or 3 (BackboneSpec.taps).')
flags.DEFINE_integer('image_size', 224, 'Square input resolution.')
flags.DEFINE_integer('batch_size', 8, 'Global batch size.')
flags.DEFINE_integer('num_classes', 200, 'Classes of every head (CUB: 200).')
flags.DEFINE_string('dtype', 'float32', 'Compute dtype: float32 | bfloat16.')
flags.DEFINE_integer('warmup', 2, 'Untimed steps after compiling.')
flags.DEFINE_integer('steps', 5, 'Timed steps.')
FLAGS = flags.FLAGS


def benchmark(name: str, model_config) -> None:
  t = time_train_step(model_config, image_size=FLAGS.image_size,
                      batch_size=FLAGS.batch_size, num_classes=FLAGS.num_classes,
                      warmup=FLAGS.warmup, num_steps=FLAGS.steps)
  print(f'{name:<28} {t.params / 1e6:7.2f}M  compile {t.compile_s:6.1f} s  '
        f'step {t.step_s * 1000:8.1f} ms  {FLAGS.batch_size / t.step_s:8.1f} img/s  '
        f'XLA args+temp {t.xla_bytes / 2**30:6.2f} GiB  {t.peak_kind} '
        f'{t.peak_bytes / 2**30:6.2f} GiB  diagnostics <= {t.diagnostics_s * 1000:.2f} ms  '
        f'metrics merge {t.merge_s * 1000:.2f} ms', flush=True)


def main(argv):
  del argv
  print(f'{FLAGS.backbone} {FLAGS.scales}-scale, {FLAGS.image_size}x{FLAGS.image_size}, batch '
        f'{FLAGS.batch_size}, {FLAGS.dtype}, {FLAGS.num_classes} classes, '
        f'{jax.device_count()} x {jax.devices()[0].device_kind}, JAX {jax.__version__}; '
        f'mean of {FLAGS.steps} steps after {FLAGS.warmup} warm-up steps')
  taps = backbones.get(FLAGS.backbone).taps[FLAGS.scales]
  clan, plain = base.get_model_config(), base.get_model_config()
  for model_config in (clan, plain):
    model_config.backbone, model_config.dtype = FLAGS.backbone, FLAGS.dtype
    model_config.mid_level_taps = taps
  plain.use_mid_block = plain.use_top_block = False
  # Plain first: a process's peak RSS only grows, so each figure is then its own.
  benchmark(f'plain {FLAGS.backbone}', plain)
  benchmark(f'CLAN {FLAGS.backbone} {FLAGS.scales}-scale', clan)


if __name__ == '__main__':
  app.run(main)
