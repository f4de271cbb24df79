"""The train state: step, parameters, BatchNorm statistics and optimizer state."""
from typing import Any

import flax.linen as nn
from flax.training import train_state
import jax
from jax.sharding import Mesh
import jax.numpy as jnp
import optax

from clan_jax import sharding


class TrainState(train_state.TrainState):
  batch_stats: Any


def _init_variables(model: nn.Module, image_size: int):
  def init(rng):
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    variables = model.init(rng, images, train=False)
    # A model without BatchNorm (plain VGG, its blocks off) has no 'batch_stats'.
    return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
  return init


def _init_fn(model: nn.Module, tx: optax.GradientTransformation, image_size: int):
  def init(rng):
    variables = _init_variables(model, image_size)(rng)
    return TrainState.create(apply_fn=model.apply, params=variables['params'],
                             batch_stats=variables['batch_stats'], tx=tx)
  return init


def _sharded(abstract: Any, mesh: Mesh, fsdp_min_size: int) -> Any:
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      abstract, sharding.state_sharding(mesh, abstract, fsdp_min_size))


def abstract_train_state(model: nn.Module, tx: optax.GradientTransformation,
                         image_size: int, mesh: Mesh,
                         fsdp_min_size: int = sharding.FSDP_MIN_SIZE) -> TrainState:
  """Shapes, dtypes and shardings (`sharding.state_sharding`) of the train state.

  Tracing the model here also raises shape errors (e.g. an image size that the
  CLSA pooling cannot divide) before anything is compiled.
  """
  return _sharded(jax.eval_shape(_init_fn(model, tx, image_size), jax.random.key(0)),
                  mesh, fsdp_min_size)


def abstract_variables(model: nn.Module, image_size: int, mesh: Mesh,
                       fsdp_min_size: int = sharding.FSDP_MIN_SIZE) -> dict[str, Any]:
  """{'params', 'batch_stats'} of `abstract_train_state`, without an optimizer."""
  return _sharded(jax.eval_shape(_init_variables(model, image_size), jax.random.key(0)),
                  mesh, fsdp_min_size)


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       rng: jax.Array, image_size: int, mesh: Mesh,
                       fsdp_min_size: int = sharding.FSDP_MIN_SIZE) -> TrainState:
  """Initialises a state directly in its sharded layout on `mesh`."""
  abstract = abstract_train_state(model, tx, image_size, mesh, fsdp_min_size)
  out_shardings = jax.tree.map(lambda x: x.sharding, abstract)
  return jax.jit(_init_fn(model, tx, image_size), out_shardings=out_shardings)(rng)
