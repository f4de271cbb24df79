"""SGD with momentum, warmup + cosine schedule, and a faster rate for new layers."""
import jax
import ml_collections
import optax

BACKBONE = 'backbone'
NEW_LAYERS = 'new_layers'
WEIGHT_DECAY_MODES = ('l2', 'decoupled')


def create_learning_rate_schedule(config: ml_collections.ConfigDict,
                                  steps_per_epoch: int,
                                  total_updates: int) -> optax.Schedule:
  """Linear warmup from 0, then cosine decay to 0; in optimizer updates."""
  warmup = min(int(config.optim.warmup_epochs * steps_per_epoch), total_updates - 1)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=1.0, warmup_steps=warmup,
      decay_steps=max(total_updates, warmup + 1), end_value=0.0)


def _sgd(config: ml_collections.ConfigDict, learning_rate: optax.Schedule
         ) -> optax.GradientTransformation:
  momentum = optax.trace(decay=config.optim.momentum, nesterov=config.optim.nesterov)
  decay = optax.add_decayed_weights(config.optim.weight_decay)
  if config.optim.weight_decay_mode == 'l2':
    # As torch.optim.SGD: the decay joins the gradient before the momentum.
    steps = [decay, momentum]
  else:
    # Decoupled (SGDW): the decay skips the momentum buffer.
    steps = [momentum, decay]
  return optax.chain(*steps, optax.scale_by_learning_rate(learning_rate))


def param_labels(params):
  """'backbone' for the backbone's parameters, 'new_layers' for the blocks and heads.

  The labels keep the containers of `params`, so that optax also matches them
  against an nnx.State (flax.nnx.Optimizer), not only a dict.
  """
  def label(path, _):
    return BACKBONE if getattr(path[0], 'key', None) == BACKBONE else NEW_LAYERS
  return jax.tree_util.tree_map_with_path(label, params)


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int,
                     total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optax optimizer of `config`, and the backbone's learning rate per update.

  `total_steps` counts train steps; with `grad_accum_steps` = k, the optimizer
  updates once every k steps (optax.MultiSteps) and the schedule runs in updates.
  """
  if config.optim.weight_decay_mode not in WEIGHT_DECAY_MODES:
    raise ValueError(f'config.optim.weight_decay_mode={config.optim.weight_decay_mode!r} is not '
                     f'one of {WEIGHT_DECAY_MODES}.')
  accum = config.optim.grad_accum_steps
  shape = create_learning_rate_schedule(config, steps_per_epoch // accum or 1,
                                        total_steps // accum or 1)
  backbone_lr = lambda count: config.optim.learning_rate * shape(count)
  new_layers_lr = lambda count: (config.optim.learning_rate * config.optim.new_layers_lr_multiplier
                                 * shape(count))
  tx = optax.multi_transform(
      {BACKBONE: _sgd(config, backbone_lr), NEW_LAYERS: _sgd(config, new_layers_lr)},
      param_labels)
  if config.optim.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(config.optim.grad_clip_norm), tx)
  if accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=accum)
  return tx, backbone_lr
