"""Max pooling whose gradient XLA:CPU computes without select-and-scatter.

`flax.linen.max_pool`'s gradient is a select-and-scatter, which XLA:CPU expands
into a reduce-window carrying an int32 index array per window dimension and a
serial scatter: on the demo's stem (3x3, stride 2, [32, 48, 48, 16]) the pool
takes 20 ms forward and backward, against 2.5 ms here, and the train step is
2-8% faster (benchmarks/max_pool.py, BENCHMARKS.md). Here the backward pass
finds each window's first maximum with strided slices and puts the output
gradient back with interior-padded copies, which XLA fuses into two loops.

The result is bit-for-bit flax's, ties included: the gradient goes to the first
maximum in row-major window order (select-and-scatter's `>=` rule, and
PyTorch's), and where windows overlap their contributions are added in the
order of their windows, row-major, as the scatter adds them. GPU and TPU keep
flax's own gradient (they have select-and-scatter kernels; not measured here).
"""
import functools
import itertools

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

# Where the sliced backward pass replaces select-and-scatter.
SLICED_BACKWARD_PLATFORMS = ('cpu',)

Padding = tuple[tuple[int, int], tuple[int, int]]


def max_pool(x: jax.Array, window: tuple[int, int], strides: tuple[int, int],
             padding: Padding = ((0, 0), (0, 0))) -> jax.Array:
  """`nn.max_pool` of x [B, H, W, C] with explicit padding, -> [B, H', W', C]."""
  if jax.default_backend() in SLICED_BACKWARD_PLATFORMS:
    return _sliced_max_pool(x, tuple(window), tuple(strides),
                            tuple(tuple(p) for p in padding))
  return nn.max_pool(x, window, strides=strides, padding=padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _sliced_max_pool(x, window, strides, padding):
  return nn.max_pool(x, window, strides=strides, padding=padding)


def _forward(x, window, strides, padding):
  return _sliced_max_pool(x, window, strides, padding), x


def _window_slice(x_padded, offset, strides, out_size):
  """[B, H', W', C]: the element at `offset` (dy, dx) of every window."""
  batch, _, _, channels = x_padded.shape
  (dy, dx), (stride_h, stride_w), (out_h, out_w) = offset, strides, out_size
  return lax.slice(
      x_padded, (0, dy, dx, 0),
      (batch, dy + stride_h * (out_h - 1) + 1, dx + stride_w * (out_w - 1) + 1, channels),
      (1, stride_h, stride_w, 1))


def _backward(window, strides, padding, x, grad):
  """The input's gradient [B, H, W, C] from the output's [B, H', W', C]."""
  (top, bottom), (left, right) = padding
  x_padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)),
                     constant_values=-jnp.inf)
  out_size = grad.shape[1:3]
  offsets = list(itertools.product(range(window[0]), range(window[1])))  # row-major
  # The first maximum's offset index in each window, from x alone: compared
  # with the forward's output instead, an x that XLA recomputed in another
  # fusion (an FMA contracted differently) would miss its window by an ulp.
  best = _window_slice(x_padded, offsets[0], strides, out_size)
  argmax = jnp.zeros(grad.shape, jnp.int32)
  for k in range(1, len(offsets)):
    values = _window_slice(x_padded, offsets[k], strides, out_size)
    better = values > best
    best, argmax = jnp.where(better, values, best), jnp.where(better, k, argmax)
  height, width = x_padded.shape[1:3]
  zero = jnp.zeros((), grad.dtype)
  total = None
  # Descending offsets are ascending windows: the scatter's order of addition.
  for k in reversed(range(len(offsets))):
    (dy, dx), (stride_h, stride_w) = offsets[k], strides
    placed = lax.pad(
        jnp.where(argmax == k, grad, zero), zero,
        ((0, 0, 0),
         (dy, height - dy - stride_h * (out_size[0] - 1) - 1, stride_h - 1),
         (dx, width - dx - stride_w * (out_size[1] - 1) - 1, stride_w - 1),
         (0, 0, 0)))
    total = placed if total is None else total + placed
  return (total[:, top:height - bottom, left:width - right, :],)


_sliced_max_pool.defvjp(_forward, _backward)
