"""A model's variables, {'params', 'batch_stats'}: their initialiser and abstract layout."""
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import Mesh
import jax.numpy as jnp

from clan_jax import sharding


def init_variables(model: nn.Module, image_size: int) -> Callable[[jax.Array], dict[str, Any]]:
  """rng -> {'params', 'batch_stats'} of `model` on [1, image_size, image_size, 3] images."""
  def init(rng):
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    variables = model.init(rng, images, train=False)
    # A model without BatchNorm (plain VGG, its blocks off) has no 'batch_stats'.
    return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
  return init


def with_state_sharding(abstract: Any, mesh: Mesh, fsdp_min_size: int) -> Any:
  """`abstract` (a tree of ShapeDtypeStructs) with `sharding.state_sharding` on `mesh`."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      abstract, sharding.state_sharding(mesh, abstract, fsdp_min_size))


def abstract_variables(model: nn.Module, image_size: int, mesh: Mesh,
                       fsdp_min_size: int = sharding.FSDP_MIN_SIZE) -> dict[str, Any]:
  """Shapes, dtypes and shardings of `init_variables`, without computing them.

  Tracing the model here also raises shape errors (e.g. an image size that the
  CLSA pooling cannot divide) before anything is compiled.
  """
  return with_state_sharding(
      jax.eval_shape(init_variables(model, image_size), jax.random.key(0)), mesh, fsdp_min_size)
