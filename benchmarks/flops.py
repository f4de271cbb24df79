"""Model FLOPs counted from the program's own matrix products, for MFU.

XLA's cost analysis counts the body of a `scan` or `while` loop once whatever
its trip count (the blockwise attention is a map over query blocks around a
scan over key blocks), may not count a cuDNN custom call at all, and includes
rematerialisation's recomputation: it measures the hardware's work, not the
model's. Here the FLOPs are counted in the jaxpr instead: every `dot_general`
(dense layers, einsums, attention's two products per query-key pair) and
`conv_general_dilated`, at 2 FLOPs per multiply-add, each inside a loop body
counted as many times as the loop runs. Elementwise work (BatchNorm,
activations, softmax) is not counted, as in torchvision's GMAC figures.
CLCA's bilinear Up is, as the matrix products `jax.image.resize` computes it
with (under 0.1% of CLAN ResNet-50's count).

A train step's model FLOPs are 3x the forward's (the backward computes two
products, for the input and the weight, per forward one), the convention of
MFU; the forward is traced with CLCA's 'reference' attention, so the count is
that of the model's definition, whichever path runs.
"""
from collections.abc import Callable
import math

import jax
from jax.extend import core
import jax.numpy as jnp
import ml_collections

from clan_jax import models

# The backward of a product costs two products of the same size.
TRAIN_STEP_FORWARDS = 3


def _dot_flops(eqn) -> int:
  """2 x outputs x contracted size."""
  lhs = eqn.invars[0].aval.shape
  (lhs_contract, _), _ = eqn.params['dimension_numbers']
  return 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)


def _conv_flops(eqn) -> int:
  """2 x outputs x kernel window x input features per group (the kernel's own)."""
  kernel = eqn.invars[1].aval.shape
  _, in_feature, *spatial = eqn.params['dimension_numbers'].rhs_spec
  return (2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(kernel[d] for d in spatial)
          * kernel[in_feature])


def _subjaxprs(params) -> list[core.Jaxpr]:
  """The programs among an equation's params (a pjit's, a scan's body, a remat's...)."""
  found = []
  for param in params.values():
    for value in param if isinstance(param, (tuple, list)) else (param,):
      if isinstance(value, core.ClosedJaxpr):
        found.append(value.jaxpr)
      elif isinstance(value, core.Jaxpr):
        found.append(value)
  return found


def jaxpr_flops(jaxpr: core.Jaxpr) -> int:
  """FLOPs of the matrix products `jaxpr` runs, loop bodies times their trip counts.

  A custom VJP counts its forward program only (its backward is no
  sub-program of the forward's jaxpr); a cond its dearest branch.
  """
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'dot_general':
      total += _dot_flops(eqn)
    elif name == 'conv_general_dilated':
      total += _conv_flops(eqn)
    elif name == 'while':
      raise NotImplementedError('A while loop: its trip count is not in the jaxpr.')
    elif name == 'cond':
      total += max(jaxpr_flops(branch.jaxpr) for branch in eqn.params['branches'])
    else:
      times = eqn.params['length'] if name == 'scan' else 1
      total += times * sum(jaxpr_flops(sub) for sub in _subjaxprs(eqn.params))
  return total


def count_flops(fn: Callable, *args) -> int:
  """FLOPs of the matrix products of `fn(*args)`; args may be ShapeDtypeStructs."""
  return jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def forward_flops(model_config: ml_collections.ConfigDict, *, image_size: int,
                  batch_size: int, num_classes: int) -> int:
  """FLOPs of the train-mode forward of `model_config`'s CLAN on [B, S, S, 3] images."""
  config = ml_collections.ConfigDict(model_config.to_dict())
  config.clca.attention_impl = 'reference'
  model = models.create_model(config, num_classes)
  images = jax.ShapeDtypeStruct((batch_size, image_size, image_size, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
  return count_flops(
      lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']), variables, images)


def train_step_flops(model_config: ml_collections.ConfigDict, *, image_size: int,
                     batch_size: int, num_classes: int) -> int:
  """Model FLOPs of one train step: 3 x the forward (see the module docstring)."""
  return TRAIN_STEP_FORWARDS * forward_flops(model_config, image_size=image_size,
                                             batch_size=batch_size, num_classes=num_classes)
