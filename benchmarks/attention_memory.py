"""Temporary memory of a CLCA train step (forward + backward) per attention path.

  python -m benchmarks.attention_memory                  # ResNet-50 layer2 at 448px: N = 56*56
  python -m benchmarks.attention_memory --sizes=28,56,80 --batch_size=8

For one CLCA block with ResNet-50's layer2 widths (L_s: [B, s, s, 512], L_N:
[B, s/4, s/4, 2048], inner width 256), it compiles the gradient of a loss
through the block and prints XLA's `memory_analysis().temp_size_in_bytes` for
each `attention_impl`: what the step needs beyond its arguments and outputs,
and the path 'auto' took (cuDNN where its compiled step calls cuDNN's fused
attention, else blockwise). Nothing runs, so the figures hold for the
platform it compiles for.
"""
from absl import app, flags
import jax
import jax.numpy as jnp

from benchmarks.timing import CUDNN_ATTENTION_CALL
from clan_jax.models.attention import IMPLEMENTATIONS
from clan_jax.models.clca import CLCA

flags.DEFINE_list('sizes', ['28', '56'], 'Side s of L_s (N = s*s); 56 is layer2 at 448px.')
flags.DEFINE_integer('batch_size', 8, 'Batch size.')
flags.DEFINE_string('dtype', 'float32', 'Compute dtype: float32 | bfloat16.')
FLAGS = flags.FLAGS


def compile_step(implementation: str, side: int):
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

  return jax.jit(jax.grad(loss, argnums=(0, 2, 3))).lower(
      variables['params'], variables['batch_stats'], mid, top).compile()


def main(argv):
  del argv
  print(f'CLCA (ResNet-50 layer2 widths) forward+backward, batch {FLAGS.batch_size}, '
        f'{FLAGS.dtype}, {jax.devices()[0].device_kind}, JAX {jax.__version__}')
  print(f'{"N":>6} ' + ' '.join(f'{impl:>14}' for impl in IMPLEMENTATIONS)
        + f' {"B*N*N*4 bytes":>14}  auto ran')
  for side in map(int, FLAGS.sizes):
    n = side * side
    cells, auto_path = [], None
    for impl in IMPLEMENTATIONS:
      try:
        compiled = compile_step(impl, side)
      except RuntimeError as e:  # cuDNN's attention failing to compile, say
        cells.append(f'{"failed":>14}')
        auto_path = auto_path or f'failed: {str(e).splitlines()[0][:120]}'
        continue
      cells.append(f'{compiled.memory_analysis().temp_size_in_bytes / 2**20:>10.1f} MiB')
      if impl == 'auto':
        auto_path = 'cuDNN' if CUDNN_ATTENTION_CALL in compiled.as_text() else 'blockwise'
    print(f'{n:>6} ' + ' '.join(cells)
          + f' {FLAGS.batch_size * n * n * 4 / 2**20:>10.1f} MiB  {auto_path}', flush=True)


if __name__ == '__main__':
  app.run(main)
