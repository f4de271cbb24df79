"""From a config to a model, its optimizer, a train state and the compiled steps.

The one place this is written: the trainer, the benchmarks and the tests all
call `create`, so what they run is what training runs.
"""
from collections.abc import Callable
import dataclasses
from typing import Any

from clu import metrics
import flax.linen as nn
import jax
from jax.sharding import Mesh
import ml_collections
import optax

from clan_jax import models, sharding
from clan_jax.training import optimizer, steps
from clan_jax.training.train_state import TrainState, create_train_state


@dataclasses.dataclass(frozen=True)
class TrainingSetup:
  """What `create` builds. `state` is freshly initialised (step 0)."""

  model: nn.Module
  branches: tuple[str, ...]
  learning_rate_fn: optax.Schedule  # the backbone's rate per optimizer update
  state: TrainState
  state_sharding: Any
  train_metrics_cls: type[metrics.Collection]
  eval_metrics_cls: type[metrics.Collection]
  train_step: Callable  # (state, batch) -> (state, metrics), state donated
  eval_step: Callable  # (state, padded batch) -> metrics


def create(config: ml_collections.ConfigDict, num_classes: int, mesh: Mesh, *,
           steps_per_epoch: int, total_steps: int,
           initialize: Callable[[TrainState], TrainState] | None = None
           ) -> TrainingSetup:
  """Builds everything one training run of `config` needs on `mesh`.

  Args:
    config: a training config (model, optimizer, loss, seed, image_size, mesh).
    num_classes: classes of every branch.
    mesh: from `sharding.create_mesh(config.mesh)`.
    steps_per_epoch, total_steps: train steps, for the learning-rate schedule.
    initialize: applied to the fresh state before its sharding is read, e.g.
      `initialization.initialize` for config.init.
  """
  model = models.create_model(config.model, num_classes)
  branches = models.branch_names(config.model.mid_level_taps, config.model.use_mid_block,
                                 config.model.use_top_block)
  tx, learning_rate_fn = optimizer.create_optimizer(config, steps_per_epoch, total_steps)
  state = create_train_state(model, tx, jax.random.key(config.seed), config.data.image_size,
                             mesh, config.mesh.fsdp_min_size)
  if initialize is not None:
    state = initialize(state)
  state_sharding = sharding.state_sharding(mesh, state, config.mesh.fsdp_min_size)
  train_metrics_cls = steps.train_metrics_collection(branches, state.params)
  eval_metrics_cls = steps.eval_metrics_collection(branches)
  train_step = steps.jit_train_step(
      mesh, state_sharding, branch_weights=dict(config.loss.branch_weights),
      label_smoothing=config.loss.label_smoothing, learning_rate_fn=learning_rate_fn,
      grad_accum_steps=config.optim.grad_accum_steps, metrics_cls=train_metrics_cls)
  eval_step = steps.jit_eval_step(mesh, state_sharding, metrics_cls=eval_metrics_cls)
  return TrainingSetup(model=model, branches=branches, learning_rate_fn=learning_rate_fn,
                       state=state, state_sharding=state_sharding,
                       train_metrics_cls=train_metrics_cls,
                       eval_metrics_cls=eval_metrics_cls, train_step=train_step,
                       eval_step=eval_step)
