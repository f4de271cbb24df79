"""Single-head attention over the positions of a feature map, as CLCA uses it.

Two implementations of the same function: `fused` never builds the [N, N]
affinity matrix where the platform has a fused kernel (cuDNN flash attention on
GPU, chosen by `jax.nn.dot_product_attention`; the 'mean' normalisation is
reassociated as q (k^T v) / N, which needs no [N, N] matrix anywhere), and
`reference`, the figure's equations written out, which tests compare against.
"""
import jax
import jax.numpy as jnp

NORMALIZATIONS = ('softmax', 'mean')
IMPLEMENTATIONS = ('fused', 'reference')


def spatial_attention(query: jax.Array, key: jax.Array, value: jax.Array, *,
                      normalization: str = 'softmax', scaled: bool = False,
                      implementation: str = 'fused') -> jax.Array:
  """Returns normalize(query key^T) value.

  Args:
    query, key, value: [B, N, D], N = H * W positions.
    normalization: 'softmax' over keys, or 'mean' (divide by N), the two
      normalisations of non-local blocks.
    scaled: multiply the logits by 1/sqrt(D) (non-local blocks do not).
    implementation: 'fused' or 'reference' (see the module docstring).

  Returns:
    [B, N, D] in the dtype of `value`.
  """
  if normalization not in NORMALIZATIONS:
    raise ValueError(f'Unknown attention normalization {normalization!r}; '
                     f'expected one of {NORMALIZATIONS}.')
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f'Unknown attention implementation {implementation!r}; '
                     f'expected one of {IMPLEMENTATIONS}.')
  num_positions, depth = key.shape[-2:]
  scale = depth**-0.5 if scaled else 1.0
  if implementation == 'reference':
    logits = jnp.einsum('bqd,bkd->bqk', query, key,
                        preferred_element_type=jnp.float32) * scale
    if normalization == 'softmax':
      affinity = jax.nn.softmax(logits, axis=-1)
    else:
      affinity = logits / num_positions
    return jnp.einsum('bqk,bkd->bqd', affinity.astype(value.dtype), value)
  if normalization == 'softmax':
    # dot_product_attention takes [B, N, heads, D]; CLCA has one head.
    out = jax.nn.dot_product_attention(
        query[:, :, None], key[:, :, None], value[:, :, None], scale=scale)
    return out[:, :, 0]
  context = jnp.einsum('bkd,bke->bde', key, value,
                       preferred_element_type=jnp.float32)
  out = jnp.einsum('bqd,bde->bqe', query.astype(jnp.float32), context)
  return (out * (scale / num_positions)).astype(value.dtype)
