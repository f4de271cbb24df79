"""The train state: step, parameters, BatchNorm statistics and optimizer state."""
from typing import Any

import flax.linen as nn
from flax.training import train_state
import jax
from jax.sharding import Mesh
import optax

from clan_jax import sharding
from clan_jax.models import variables as variables_lib


class TrainState(train_state.TrainState):
  batch_stats: Any


def eval_state(model: nn.Module, variables: dict[str, Any], step: int) -> TrainState:
  """Trained `variables` ({'params', 'batch_stats'}) as a state without optimizer,
  for the eval steps of `clan_jax.training.steps`."""
  return TrainState(step=step, apply_fn=model.apply, params=variables['params'],
                    batch_stats=variables['batch_stats'], tx=None, opt_state=None)


def _init_fn(model: nn.Module, tx: optax.GradientTransformation, image_size: int):
  def init(rng):
    variables = variables_lib.init_variables(model, image_size)(rng)
    return TrainState.create(apply_fn=model.apply, params=variables['params'],
                             batch_stats=variables['batch_stats'], tx=tx)
  return init


def abstract_train_state(model: nn.Module, tx: optax.GradientTransformation,
                         image_size: int, mesh: Mesh,
                         fsdp_min_size: int = sharding.FSDP_MIN_SIZE) -> TrainState:
  """Shapes, dtypes and shardings (`sharding.state_sharding`) of the train state.

  Tracing the model here also raises shape errors (e.g. an image size that the
  CLSA pooling cannot divide) before anything is compiled.
  """
  return variables_lib.with_state_sharding(
      jax.eval_shape(_init_fn(model, tx, image_size), jax.random.key(0)), mesh, fsdp_min_size)


# XLA:CPU spends most of an initialiser's compile in LLVM's -O3 pipeline (a
# threefry and an erf_inv fusion for each parameter): the tiny test model's took
# 7.6 s at -O3 and 3.1 s at -O2, which computes the same bits (integer hashing,
# then IEEE arithmetic that LLVM may not reorder); tests/test_train.py checks
# them equal. Only the CPU: on GPU and TPU the level means something else and
# their compiles are not the bottleneck.
_CPU_INIT_COMPILER_OPTIONS = {'xla_backend_optimization_level': 2}


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       rng: jax.Array, image_size: int, mesh: Mesh,
                       fsdp_min_size: int = sharding.FSDP_MIN_SIZE) -> TrainState:
  """Initialises a state directly in its sharded layout on `mesh`."""
  abstract = abstract_train_state(model, tx, image_size, mesh, fsdp_min_size)
  out_shardings = jax.tree.map(lambda x: x.sharding, abstract)
  on_cpu = mesh.devices.flat[0].platform == 'cpu'
  return jax.jit(_init_fn(model, tx, image_size), out_shardings=out_shardings,
                 compiler_options=_CPU_INIT_COMPILER_OPTIONS if on_cpu else None)(rng)
