"""Temporary memory of a CLCA train step (forward + backward) per attention path.

  python benchmarks/attention_memory.py                  # ResNet-50 layer2 at 448px: N = 56*56
  python benchmarks/attention_memory.py --sizes=28,56,80 --batch_size=8

For one CLCA block with ResNet-50's layer2 widths (L_s: [B, s, s, 512], L_N:
[B, s/4, s/4, 2048], inner width 256), it compiles the gradient of a loss
through the block and prints XLA's `memory_analysis().temp_size_in_bytes` for
each `attention_impl`: what the step needs beyond its arguments and outputs.
Nothing runs, so the figures hold for the platform it compiles for.
"""
import os
import sys

from absl import app, flags
import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from clan_jax.models.attention import IMPLEMENTATIONS  # pylint: disable=g-import-not-at-top
from clan_jax.models.clca import CLCA

flags.DEFINE_list('sizes', ['28', '56'], 'Side s of L_s (N = s*s); 56 is layer2 at 448px.')
flags.DEFINE_integer('batch_size', 8, 'Batch size.')
flags.DEFINE_string('dtype', 'float32', 'Compute dtype: float32 | bfloat16.')
FLAGS = flags.FLAGS


def temp_bytes(implementation: str, side: int) -> int:
  dtype = jnp.dtype(FLAGS.dtype)
  clca = CLCA(attention_impl=implementation, dtype=dtype)
  mid = jax.ShapeDtypeStruct((FLAGS.batch_size, side, side, 512), jnp.float32)
  top = jax.ShapeDtypeStruct((FLAGS.batch_size, side // 4, side // 4, 2048), jnp.float32)
  variables = jax.eval_shape(lambda m, t: clca.init(jax.random.key(0), m, t, train=False),
                             mid, top)

  def loss(params, batch_stats, mid, top):
    out, _ = clca.apply({'params': params, 'batch_stats': batch_stats},
                        mid, top, train=True, mutable=['batch_stats'])
    return jnp.mean(out.astype(jnp.float32) ** 2)

  compiled = jax.jit(jax.grad(loss, argnums=(0, 2, 3))).lower(
      variables['params'], variables['batch_stats'], mid, top).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def main(argv):
  del argv
  print(f'CLCA (ResNet-50 layer2 widths) forward+backward, batch {FLAGS.batch_size}, '
        f'{FLAGS.dtype}, {jax.devices()[0].device_kind}, JAX {jax.__version__}')
  print(f'{"N":>6} ' + ' '.join(f'{impl:>14}' for impl in IMPLEMENTATIONS)
        + f' {"B*N*N*4 bytes":>14}')
  for side in map(int, FLAGS.sizes):
    n = side * side
    figures = [temp_bytes(impl, side) / 2**20 for impl in IMPLEMENTATIONS]
    print(f'{n:>6} ' + ' '.join(f'{f:>10.1f} MiB' for f in figures)
          + f' {FLAGS.batch_size * n * n * 4 / 2**20:>10.1f} MiB', flush=True)


if __name__ == '__main__':
  app.run(main)
