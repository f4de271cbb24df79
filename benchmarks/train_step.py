"""Train-step speed and memory of CLAN next to its plain backbone, in one run.

  python benchmarks/train_step.py --image_size=224 --batch_size=8
  python benchmarks/train_step.py --backbone=vgg16 --scales=3 --image_size=224 --batch_size=8
  python benchmarks/train_step.py --backbone=resnet50 --image_size=448 --batch_size=32 --dtype=bfloat16

For each model (the backbone with CLCA and CLSA off, then CLAN with every spec
default and the backbone's --scales taps) it compiles the real sharded train step of train.py, runs
--warmup steps, times --steps steps, and prints: compile time, mean step time,
images per second, XLA's memory estimate of the compiled step (arguments +
temporaries), and the peak memory the device reports (GPU/TPU) or the
process's peak resident memory so far (CPU, which has no per-device count).
"""
import os
import resource
import sys
import time

from absl import app, flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from clan_jax import models, sharding  # pylint: disable=g-import-not-at-top
from clan_jax.models import backbones
from clan_jax.training import optimizer, steps
from clan_jax.training.train_state import create_train_state
from configs import default

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


def _peak_memory_gib() -> tuple[str, float]:
  stats = jax.devices()[0].memory_stats()
  if stats and 'peak_bytes_in_use' in stats:
    return 'device peak', stats['peak_bytes_in_use'] / 2**30
  # ru_maxrss is in KiB on Linux.
  return 'process peak RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def benchmark(name: str, model_config) -> None:
  config = default.get_config()
  config.model = model_config
  mesh = sharding.create_mesh(config.mesh)
  model = models.create_model(model_config, FLAGS.num_classes)
  branches = models.branch_names(model_config.mid_level_taps, model_config.use_clca,
                                 model_config.use_clsa)
  tx, lr_fn = optimizer.create_optimizer(config, steps_per_epoch=100, total_steps=10_000)
  state = create_train_state(model, tx, jax.random.key(0), FLAGS.image_size, mesh)
  train_step = steps.jit_train_step(
      mesh, sharding.state_sharding(mesh, state), branch_weights={}, label_smoothing=0.0,
      learning_rate_fn=lr_fn, grad_accum_steps=1,
      metrics_cls=steps.train_metrics_collection(branches))
  rng = np.random.default_rng(0)
  batch = jax.device_put(
      {'image': rng.normal(size=(FLAGS.batch_size, FLAGS.image_size, FLAGS.image_size, 3)
                           ).astype(np.float32),
       'label': rng.integers(0, FLAGS.num_classes, FLAGS.batch_size).astype(np.int32)},
      sharding.batch_sharding(mesh))

  started = time.perf_counter()
  compiled = train_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - started
  analysis = compiled.memory_analysis()
  xla_gib = ((analysis.argument_size_in_bytes + analysis.temp_size_in_bytes) / 2**30
             if analysis is not None else float('nan'))
  for _ in range(FLAGS.warmup):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  started = time.perf_counter()
  for _ in range(FLAGS.steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  step_s = (time.perf_counter() - started) / FLAGS.steps
  params = sum(x.size for x in jax.tree.leaves(state.params))
  peak_kind, peak = _peak_memory_gib()
  print(f'{name:<28} {params / 1e6:7.2f}M  compile {compile_s:6.1f} s  '
        f'step {step_s * 1000:8.1f} ms  {FLAGS.batch_size / step_s:8.1f} img/s  '
        f'XLA args+temp {xla_gib:6.2f} GiB  {peak_kind} {peak:6.2f} GiB', flush=True)


def main(argv):
  del argv
  print(f'{FLAGS.backbone} {FLAGS.scales}-scale, {FLAGS.image_size}x{FLAGS.image_size}, batch '
        f'{FLAGS.batch_size}, {FLAGS.dtype}, {FLAGS.num_classes} classes, '
        f'{jax.device_count()} x {jax.devices()[0].device_kind}, JAX {jax.__version__}; '
        f'mean of {FLAGS.steps} steps after {FLAGS.warmup} warm-up steps')
  taps = backbones.get(FLAGS.backbone).taps[FLAGS.scales]
  clan, plain = default.get_model_config(), default.get_model_config()
  for model_config in (clan, plain):
    model_config.backbone, model_config.dtype = FLAGS.backbone, FLAGS.dtype
    model_config.mid_level_taps = taps
  plain.use_clca = plain.use_clsa = False
  # Plain first: a process's peak RSS only grows, so each figure is then its own.
  benchmark(f'plain {FLAGS.backbone}', plain)
  benchmark(f'CLAN {FLAGS.backbone} {FLAGS.scales}-scale', clan)


if __name__ == '__main__':
  app.run(main)
