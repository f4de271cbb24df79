"""The train step with flax's max-pool gradient and with the sliced one, in one process.

  python -m benchmarks.max_pool                  # the demo's model, 96 px, batch 32
  python -m benchmarks.max_pool --backbone=resnet50 --width=64 --size=128 --batch=8 \
      --num_classes=200 --rounds=5 --steps=3

clan_jax/models/pooling.py replaces select-and-scatter, the gradient of
`flax.linen.max_pool`, on a CPU. This compiles train.py's train step twice,
once with each gradient, and times them in alternating rounds (a drift in the
machine's load then hits both alike); it prints each round, the medians and
their ratio, and whether the two states are still bit-for-bit equal after
every round's steps. It also times the stem's pool alone, forward and
backward, both ways.
"""
import contextlib

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from clan_jax.models import pooling
from clan_jax.models.resnet import RESNET_VARIANTS
from configs import default

flags.DEFINE_integer('size', 96, 'Square input resolution.', lower_bound=32)
flags.DEFINE_integer('batch', 32, 'Global batch size.', lower_bound=1)
flags.DEFINE_enum('backbone', 'resnet18', tuple(RESNET_VARIANTS), 'torchvision ResNet.')
flags.DEFINE_integer('width', 16, 'Backbone stem width (torchvision: 64).', lower_bound=1)
flags.DEFINE_integer('num_classes', 32, 'Classes of every head.', lower_bound=2)
flags.DEFINE_integer('rounds', 7, 'Timed rounds per gradient, alternating.', lower_bound=1)
flags.DEFINE_integer('steps', 10, 'Train steps per round.', lower_bound=1)
FLAGS = flags.FLAGS

STEM_POOL = dict(window=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


@contextlib.contextmanager
def _sliced_backward_on(platforms: tuple[str, ...]):
  """Traces within it use clan_jax/models/pooling.py's sliced gradient on `platforms` only."""
  saved = pooling.SLICED_BACKWARD_PLATFORMS
  pooling.SLICED_BACKWARD_PLATFORMS = platforms
  try:
    yield
  finally:
    pooling.SLICED_BACKWARD_PLATFORMS = saved


def _compiled_step(platforms: tuple[str, ...]):
  """(compiled train step, its state, a batch) with the sliced gradient on `platforms`."""
  model = default.get_config().model
  model.backbone = FLAGS.backbone
  model.backbone_width = FLAGS.width
  run, state, batch = timing.train_step_setup(
      model, image_size=FLAGS.size, batch_size=FLAGS.batch, num_classes=FLAGS.num_classes)
  with _sliced_backward_on(platforms):
    return run.train_step.lower(state, batch).compile(), state, batch


def _compiled_pool(platforms: tuple[str, ...], x: jax.Array):
  """The stem pool's forward and backward on x, compiled with the sliced gradient on `platforms`."""

  def forward_backward(x, cotangent):
    y, vjp = jax.vjp(lambda x: pooling.max_pool(x, **STEM_POOL), x)
    return y, vjp(cotangent)[0]

  with _sliced_backward_on(platforms):
    out = jax.eval_shape(lambda x: pooling.max_pool(x, **STEM_POOL), x)
    cotangent = jnp.ones(out.shape, out.dtype)
    return jax.jit(forward_backward).lower(x, cotangent).compile(), cotangent


def main(argv):
  del argv
  variants = {'select-and-scatter': (), 'sliced': (jax.default_backend(),)}
  steps = {name: _compiled_step(platforms) for name, platforms in variants.items()}
  states = {name: step[1] for name, step in steps.items()}
  for name, (compiled, _, batch) in steps.items():  # the first calls are slower
    for _ in range(2):
      states[name], _ = compiled(states[name], batch)
  print(f'CLAN {FLAGS.backbone} (width {FLAGS.width}), {FLAGS.size}x{FLAGS.size}, batch '
        f'{FLAGS.batch}, float32, JAX {jax.__version__} on {jax.default_backend()}; '
        f'train step ms, {FLAGS.rounds} rounds of {FLAGS.steps} steps each way')
  times = {name: [] for name in variants}
  for round_index in range(FLAGS.rounds):
    for name, (compiled, _, batch) in steps.items():
      def one_step(name=name, compiled=compiled, batch=batch):
        states[name], step_metrics = compiled(states[name], batch)
        return states[name], step_metrics
      times[name].append(1e3 * timing.seconds_per_call(one_step, FLAGS.steps))
    equal = all(np.array_equal(a, b) for a, b in zip(*(jax.tree.leaves(jax.device_get(s))
                                                       for s in states.values())))
    print(f'round {round_index + 1}: '
          + ', '.join(f'{name} {times[name][-1]:.1f}' for name in variants)
          + f'; states bit-for-bit equal: {equal}', flush=True)
  medians = {name: float(np.median(t)) for name, t in times.items()}
  print('train step, medians: ' + ', '.join(f'{n} {m:.1f} ms' for n, m in medians.items())
        + f'; sliced speed-up {medians["select-and-scatter"] / medians["sliced"]:.3f}x')

  shape = (FLAGS.batch, FLAGS.size // 2, FLAGS.size // 2, FLAGS.width)
  x = jnp.asarray(np.maximum(np.random.default_rng(0).normal(size=shape), 0), jnp.float32)
  pools = {name: _compiled_pool(platforms, x) for name, platforms in variants.items()}
  pool_ms = {name: [] for name in variants}
  for _ in range(FLAGS.rounds):
    for name, (compiled, cotangent) in pools.items():
      pool_ms[name].append(1e3 * timing.seconds_per_call(
          lambda compiled=compiled, c=cotangent: compiled(x, c), FLAGS.steps))
  print(f'stem max pool alone on {list(shape)}, forward and backward, medians: '
        + ', '.join(f'{n} {np.median(t):.2f} ms' for n, t in pool_ms.items()))


if __name__ == '__main__':
  app.run(main)
