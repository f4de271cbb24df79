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


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       rng: jax.Array, image_size: int, mesh: Mesh) -> TrainState:
  """Initialises a state directly in its sharded layout on `mesh`."""
  def init(rng):
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    variables = model.init(rng, images, train=False)
    return TrainState.create(apply_fn=model.apply, params=variables['params'],
                             batch_stats=variables['batch_stats'], tx=tx)

  # Tracing `init` here also raises shape errors (e.g. an image size that the
  # CLSA pooling cannot divide) before anything is compiled.
  abstract_state = jax.eval_shape(init, rng)
  return jax.jit(init, out_shardings=sharding.state_sharding(mesh, abstract_state))(rng)
