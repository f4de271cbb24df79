"""Single-head attention over the positions of a feature map, as CLCA uses it.

Three implementations of the same function normalize(q k^T) v, [B, N, D] ->
[B, N, E]; what each does on each platform:

- 'blockwise' (every platform: CPU, GPU, TPU). 'softmax': queries and keys in
  blocks of at most `block_size` positions with an online softmax (a running
  maximum and sum per query), and a custom VJP whose backward recomputes each
  block's logits from q, k and the saved log-sum-exp, so neither pass keeps
  more than [B, block, block] logits: memory grows as N, not N^2. 'mean':
  reassociated as q (k^T v) / N, which has no [N, N] matrix at all.
- 'auto' (the default): on GPU, for bfloat16 / float16 inputs whose head dim
  cuDNN accepts (a multiple of 8, at most 256 on Hopper and later, 128
  before), 'softmax' runs cuDNN's fused flash-attention kernel
  (`jax.nn.dot_product_attention(implementation='cudnn')`); everywhere else
  (CPU, TPU, float32, other head dims, 'mean') it is 'blockwise'.
- 'reference': the figure's equations written out, the full [B, N, N] affinity
  in float32, which tests compare the others against.

`jax.nn.dot_product_attention` with its default implementation is not used: it
takes XLA's path on every platform, which builds the [B, N, N] logits.
"""
import functools
import math

from absl import logging
import jax
import jax.numpy as jnp

NORMALIZATIONS = ('softmax', 'mean')
IMPLEMENTATIONS = ('auto', 'blockwise', 'reference')
DEFAULT_BLOCK_SIZE = 512


def spatial_attention(query: jax.Array, key: jax.Array, value: jax.Array, *,
                      normalization: str = 'softmax', scaled: bool = False,
                      implementation: str = 'auto',
                      block_size: int = DEFAULT_BLOCK_SIZE) -> jax.Array:
  """Returns normalize(query key^T) value.

  Args:
    query, key: [B, N, D], N = H * W positions.
    value: [B, N, E].
    normalization: 'softmax' over keys, or 'mean' (divide by N), the two
      normalisations of non-local blocks.
    scaled: multiply the logits by 1/sqrt(D) (non-local blocks do not).
    implementation: 'auto', 'blockwise' or 'reference' (see the module docstring).
    block_size: most positions per query or key block of 'blockwise'.

  Returns:
    [B, N, E] in the dtype of `value`.
  """
  num_positions, depth = key.shape[-2:]
  scale = depth**-0.5 if scaled else 1.0
  if implementation == 'reference':
    weights = affinity(query, key, normalization=normalization, scaled=scaled)
    return jnp.einsum('bqk,bkd->bqd', weights.astype(value.dtype), value)
  if normalization == 'mean':
    context = jnp.einsum('bkd,bke->bde', key, value,
                         preferred_element_type=jnp.float32)
    out = jnp.einsum('bqd,bde->bqe', query.astype(jnp.float32), context)
    return (out * (scale / num_positions)).astype(value.dtype)
  if implementation == 'auto' and cudnn_applies(query, value):
    try:
      # dot_product_attention takes [B, N, heads, D]; CLCA has one head.
      out = jax.nn.dot_product_attention(
          query[:, :, None], key[:, :, None], value[:, :, None], scale=scale,
          implementation='cudnn')
      return out[:, :, 0]
    # cuDNN's own finer checks, at trace time: shapes, its version, its presence.
    except (NotImplementedError, RuntimeError) as e:
      logging.warning('cuDNN attention unavailable (%s); using blockwise.', e)
  return blockwise_softmax_attention(query, key, value, scale, block_size)


def affinity(query: jax.Array, key: jax.Array, *, normalization: str = 'softmax',
             scaled: bool = False) -> jax.Array:
  """normalize(query key^T), the attention weights: [B, Q, D], [B, N, D] -> float32 [B, Q, N].

  The 'reference' implementation's, and the attention maps' for chosen queries.
  """
  num_positions, depth = key.shape[-2:]
  logits = jnp.einsum('bqd,bkd->bqk', query, key, preferred_element_type=jnp.float32)
  if scaled:
    logits = logits * depth**-0.5
  if normalization == 'softmax':
    return jax.nn.softmax(logits, axis=-1)
  return logits / num_positions


def cudnn_applies(query: jax.Array, value: jax.Array) -> bool:
  """Whether cuDNN's flash attention takes these inputs on the default device."""
  device = jax.devices()[0]
  if device.platform != 'gpu' or query.dtype not in (jnp.bfloat16, jnp.float16):
    return False
  hopper = float(getattr(device, 'compute_capability', '0')) >= 9.0
  max_depth = 256 if hopper else 128
  return all(x.shape[-1] % 8 == 0 and x.shape[-1] <= max_depth for x in (query, value))


def _blocks(x: jax.Array, size: int, count: int) -> jax.Array:
  """[B, N, D] -> [count, B, size, D], zero-padding N up to count * size."""
  b, n, d = x.shape
  x = jnp.pad(x, ((0, 0), (0, count * size - n), (0, 0)))
  return x.reshape(b, count, size, d).transpose(1, 0, 2, 3)


def _unblocks(x: jax.Array, n: int) -> jax.Array:
  """[count, B, size, D] -> [B, n, D] (drops the padding)."""
  count, b, size, d = x.shape
  return x.transpose(1, 0, 2, 3).reshape(b, count * size, d)[:, :n]


def _block_layout(n: int, max_block: int) -> tuple[int, int]:
  """(block, count): the fewest blocks of at most `max_block`, evenly sized (x8)."""
  count = math.ceil(n / max_block)
  block = -(-math.ceil(n / count) // 8) * 8
  return block, count


def _logits(q_block, k_block, key_valid, scale):
  """float32 [B, bq, bk] logits, padded keys at -inf."""
  s = jnp.einsum('bqd,bkd->bqk', q_block, k_block,
                 preferred_element_type=jnp.float32) * scale
  return jnp.where(key_valid[None, None, :], s, -jnp.inf)


def _forward(query, key, value, scale, block_size):
  """The output [B, N, E] and the per-query log-sum-exp [count, B, bq] (float32)."""
  n = key.shape[1]
  block, count = _block_layout(n, block_size)
  q_blocks, k_blocks, v_blocks = (_blocks(x, block, count) for x in (query, key, value))
  key_valid = (jnp.arange(count * block) < n).reshape(count, block)

  def one_query_block(q_block):
    def step(carry, kv):
      running_max, running_sum, acc = carry
      k_block, v_block, valid = kv
      s = _logits(q_block, k_block, valid, scale)
      new_max = jnp.maximum(running_max, s.max(-1))
      p = jnp.exp(s - new_max[..., None])
      correction = jnp.exp(running_max - new_max)
      acc = acc * correction[..., None] + jnp.einsum(
          'bqk,bke->bqe', p.astype(v_block.dtype), v_block,
          preferred_element_type=jnp.float32)
      return (new_max, running_sum * correction + p.sum(-1), acc), None

    b, bq, _ = q_block.shape
    init = (jnp.full((b, bq), -jnp.inf, jnp.float32), jnp.zeros((b, bq), jnp.float32),
            jnp.zeros((b, bq, value.shape[-1]), jnp.float32))
    (running_max, running_sum, acc), _ = jax.lax.scan(
        step, init, (k_blocks, v_blocks, key_valid))
    return acc / running_sum[..., None], running_max + jnp.log(running_sum)

  out_blocks, lse = jax.lax.map(one_query_block, q_blocks)
  return _unblocks(out_blocks, n).astype(value.dtype), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def blockwise_softmax_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                                scale: float, block_size: int) -> jax.Array:
  """softmax(scale * query key^T) value without an [N, N] array: [B, N, D] -> [B, N, E]."""
  return _forward(query, key, value, scale, block_size)[0]


def _blockwise_fwd(query, key, value, scale, block_size):
  out, lse = _forward(query, key, value, scale, block_size)
  return out, (query, key, value, out, lse)


def _blockwise_bwd(scale, block_size, residuals, d_out):
  """Flash-attention's backward: logits recomputed block by block from the log-sum-exp.

  Outer loop over key blocks (each one's dk, dv summed over query blocks);
  dq, [count, B, bq, D], is carried and updated by every key block.
  """
  query, key, value, out, lse = residuals
  n = key.shape[1]
  block, count = _block_layout(n, block_size)
  q_blocks, k_blocks, v_blocks = (_blocks(x, block, count) for x in (query, key, value))
  do_blocks = _blocks(d_out.astype(jnp.float32), block, count)
  # delta_i = sum_e dO_ie O_ie = sum_j P_ij dP_ij, the softmax's Jacobian term.
  delta = jnp.sum(do_blocks * _blocks(out.astype(jnp.float32), block, count), -1)
  key_valid = (jnp.arange(count * block) < n).reshape(count, block)

  def one_key_block(dq, kv):
    k_block, v_block, valid = kv

    def step(carry, q_stuff):
      dk, dv = carry
      q_block, do_block, lse_block, delta_block, dq_block = q_stuff
      p = jnp.exp(_logits(q_block, k_block, valid, scale) - lse_block[..., None])
      dv = dv + jnp.einsum('bqk,bqe->bke', p, do_block)
      dp = jnp.einsum('bqe,bke->bqk', do_block, v_block,
                      preferred_element_type=jnp.float32)
      ds = p * (dp - delta_block[..., None]) * scale
      dk = dk + jnp.einsum('bqk,bqd->bkd', ds, q_block,
                           preferred_element_type=jnp.float32)
      dq_block = dq_block + jnp.einsum('bqk,bkd->bqd', ds, k_block,
                                       preferred_element_type=jnp.float32)
      return (dk, dv), dq_block

    b = k_block.shape[0]
    init = (jnp.zeros((b, block, key.shape[-1]), jnp.float32),
            jnp.zeros((b, block, value.shape[-1]), jnp.float32))
    (dk, dv), dq = jax.lax.scan(step, init, (q_blocks, do_blocks, lse, delta, dq))
    return dq, (dk, dv)

  dq = jnp.zeros(q_blocks.shape, jnp.float32)
  dq, (dk, dv) = jax.lax.scan(one_key_block, dq, (k_blocks, v_blocks, key_valid))
  return (_unblocks(dq, n).astype(query.dtype), _unblocks(dk, n).astype(key.dtype),
          _unblocks(dv, n).astype(value.dtype))


blockwise_softmax_attention.defvjp(_blockwise_fwd, _blockwise_bwd)
