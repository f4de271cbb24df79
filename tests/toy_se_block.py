"""A toy mid-level block, as a fork would add one: squeeze-excitation from the top-level map.

This file, one registry line (blocks.MID_LEVEL_BLOCKS['se'] = SPEC) and one
config group (config.model.se) are all it takes; tests/test_plugins.py
trains, evaluates, resumes and validates a CLAN with it.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from clan_jax import config_rules as rules
from clan_jax.models.block_spec import BlockSpec


class SqueezeExcitation(nn.Module):
  """L̂_s = L_s * sigmoid(W_2 relu(W_1 mean_hw(L_N))): channels of L_s gated by L_N's context.

  The gate, [B, C_s], is sown as intermediates/gate.

  Attributes:
    reduction: the hidden width is C_s // reduction.
  """

  reduction: int = 4
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, mid: jax.Array, top: jax.Array, train: bool) -> jax.Array:
    """Maps L_s [B, H_s, W_s, C_s] and L_N [B, H_g, W_g, C_g] to [B, H_s, W_s, C_s]."""
    del train
    channels = mid.shape[-1]
    dense = lambda width, name: nn.Dense(width, dtype=self.dtype,
                                         param_dtype=self.param_dtype, name=name)
    context = jnp.mean(top, axis=(1, 2))
    hidden = nn.relu(dense(max(1, channels // self.reduction), 'squeeze')(context))
    gate = nn.sigmoid(dense(channels, 'excite')(hidden))
    self.sow('intermediates', 'gate', gate)
    return mid * gate[:, None, None, :]


def _diagnostics(params, sown):
  del params
  return {'se_gate_mean': jnp.mean(sown['gate'][0].astype(jnp.float32))}


SPEC = BlockSpec(
    module=SqueezeExcitation,
    rules=(rules.integer('reduction', 1),),
    diagnostic_names=('se_gate_mean',),
    diagnostics=_diagnostics,
    # Say `reduction` came in a later version: workdirs written before it
    # had 4, and still load and resume (clan_jax/workdir/compatibility.py).
    added_fields={'reduction': 4},
)
