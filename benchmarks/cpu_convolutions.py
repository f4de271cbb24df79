"""One convolution at a time: XLA:CPU's kernels against PyTorch's (oneDNN), per role.

  python -m benchmarks.cpu_convolutions                    # the demo's ResNet-18 shapes
  python -m benchmarks.cpu_convolutions --width=64 --size=128 --batch=16

For the stem's 7x7 convolution and the 3x3 convolution of each ResNet stage at
the given batch, size and width (NHWC, float32), this times, jitted, the
forward, the filter gradient alone and both gradients as `jax.vjp` gives
them, and the same three in PyTorch: `conv2d` and `aten::convolution_backward`
(weight only, then input and weight) on channels-last tensors. Each figure is
the median of 5 rounds; JAX and PyTorch alternate round by round. XLA's
filter gradient includes the layout transposes it emits for it (as in the
train step); PyTorch's has none to emit. The stem's input gradient is left
out: the images need none, and the train step computes none.

Needs jax, torch and what benchmarks/timing.py needs; nothing here imports TensorFlow.
"""
from absl import app, flags
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks import timing

flags.DEFINE_integer('batch', 32, 'Batch size.', lower_bound=1)
flags.DEFINE_integer('size', 96, 'Input resolution (the stem sees it; stage i sees size/2^(i+2)).',
                     lower_bound=32)
flags.DEFINE_integer('width', 16, 'Backbone width (torchvision: 64).', lower_bound=1)
flags.DEFINE_integer('calls', 20, 'Calls per round.', lower_bound=1)
FLAGS = flags.FLAGS

DIMENSIONS = ('NHWC', 'HWIO', 'NHWC')
ROLES = ('forward', 'filter gradient', 'input + filter gradients')


def _shapes(batch: int, size: int, width: int):
  """(name, [B, H, W, C_in], C_out, kernel, stride, padding, roles) of each convolution."""
  yield 'stem 7x7/2', (batch, size, size, 3), width, 7, 2, 3, ROLES[:2]
  for stage in range(4):
    side, channels = size // 2 ** (stage + 2), width * 2 ** stage
    if side >= 1:
      yield f'layer{stage + 1} 3x3', (batch, side, side, channels), channels, 3, 1, 1, ROLES


def _jax_calls(x_shape, out_channels, kernel, stride, padding):
  """{role: a no-argument function running it} on random NHWC operands."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, x_shape[-1], out_channels)), jnp.float32)
  conv = lambda x, w: lax.conv_general_dilated(
      x, w, (stride, stride), ((padding, padding), (padding, padding)),
      dimension_numbers=DIMENSIONS)
  g = jnp.asarray(rng.normal(size=jax.eval_shape(conv, x, w).shape), jnp.float32)
  forward = jax.jit(conv)
  filter_grad = jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0])
  both = jax.jit(lambda x, w, g: jax.vjp(conv, x, w)[1](g))
  return {'forward': lambda: forward(x, w), 'filter gradient': lambda: filter_grad(x, w, g),
          'input + filter gradients': lambda: both(x, w, g)}


def _torch_calls(x_shape, out_channels, kernel, stride, padding):
  """The same three in PyTorch, channels-last."""
  batch, height, width, channels = x_shape
  channels_last = torch.channels_last
  x = torch.randn(batch, channels, height, width).contiguous(memory_format=channels_last)
  w = torch.randn(out_channels, channels, kernel, kernel).contiguous(memory_format=channels_last)
  with torch.no_grad():
    g = torch.randn_like(torch.nn.functional.conv2d(x, w, stride=stride, padding=padding))
  backward = lambda mask: torch.ops.aten.convolution_backward(
      g, x, w, None, (stride, stride), (padding, padding), (1, 1), False, (0, 0), 1, mask)

  def forward():
    with torch.no_grad():
      return torch.nn.functional.conv2d(x, w, stride=stride, padding=padding)

  return {'forward': forward, 'filter gradient': lambda: backward((False, True, False)),
          'input + filter gradients': lambda: backward((True, True, False))}


def main(argv):
  del argv
  print(f'float32 NHWC, batch {FLAGS.batch}, {FLAGS.size} px, width {FLAGS.width}; '
        f'JAX {jax.__version__} on {jax.default_backend()}, PyTorch {torch.__version__} '
        f'({torch.get_num_threads()} threads); ms per call, median of 5 rounds of {FLAGS.calls}')
  print(f'{"convolution":<14}{"input":<20}{"role":<26}{"XLA":>9}{"PyTorch":>9}{"XLA/PyTorch":>13}')
  for name, x_shape, out_channels, kernel, stride, padding, roles in _shapes(
      FLAGS.batch, FLAGS.size, FLAGS.width):
    sides = {'XLA': _jax_calls(x_shape, out_channels, kernel, stride, padding),
             'PyTorch': _torch_calls(x_shape, out_channels, kernel, stride, padding)}
    for role in roles:
      times = {side: [] for side in sides}
      for side, calls in sides.items():
        jax.block_until_ready(calls[role]())  # compiles, and warms PyTorch's caches
      for _ in range(5):
        for side, calls in sides.items():
          times[side].append(1e3 * timing.seconds_per_call(calls[role], FLAGS.calls))
      xla, pytorch = (float(np.median(times[side])) for side in ('XLA', 'PyTorch'))
      print(f'{name:<14}{str(list(x_shape)):<20}{role:<26}{xla:>9.3f}{pytorch:>9.3f}'
            f'{xla / pytorch:>12.2f}x', flush=True)


if __name__ == '__main__':
  app.run(main)
