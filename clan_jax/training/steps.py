"""The train and eval steps: pure functions of (state, batch), compiled with jax.jit."""
from collections.abc import Callable, Iterable, Mapping, Sequence
import functools
from typing import Any

from clu import metrics
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import optax

from clan_jax import sharding
from clan_jax.training import diagnostics
from clan_jax.training.losses import clan_loss, cross_entropy
from clan_jax.training.train_state import TrainState

COMBINED = 'combined'


def train_metrics_collection(branches: Sequence[str], params
                             ) -> type[metrics.Collection]:
  """Train metrics: the loss, the combined top-1 and the lr; each branch's loss
  and top-1; the `diagnostics` of a model with these params; and 'nonfinite',
  the fraction of steps whose loss or gradient norm was not finite, and whose
  update was therefore dropped (see `train_step`).
  """
  averages = ([f'loss_{b}' for b in branches] + [f'accuracy_{b}' for b in branches]
              + diagnostics.names(params))
  return metrics.Collection.create(
      loss=metrics.Average.from_output('loss'),
      nonfinite=metrics.Average.from_output('nonfinite'),
      accuracy=metrics.Average.from_output('accuracy'),
      learning_rate=metrics.LastValue.from_output('learning_rate'),
      **{name: metrics.Average.from_output(name) for name in averages})


def eval_metrics_collection(branches: Sequence[str]) -> type[metrics.Collection]:
  """Eval metrics: top-1 and top-5 of each branch and of the combination, and the loss.

  Each is a masked average, so its `count` is the number of real examples seen.
  """
  names = [f'{k}_{b}' for b in (*branches, COMBINED) for k in ('top1', 'top5')]
  return metrics.Collection.create(
      loss=metrics.Average.from_output('loss'),
      **{name: metrics.Average.from_output(name) for name in names})


def topk_correct(scores: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """1.0 where the label is among the `k` highest scores: [B, K], [B] -> [B]."""
  k = min(k, scores.shape[-1])
  _, top = jax.lax.top_k(scores, k)
  return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


def train_step(state: TrainState, batch: Mapping[str, jax.Array], *,
               branch_weights: Mapping[str, float], label_smoothing: float,
               learning_rate_fn: optax.Schedule, grad_accum_steps: int,
               metrics_cls: type[metrics.Collection]):
  """One optimisation step on a global batch {'image': [B, H, W, 3], 'label': [B]}.

  A step whose loss or gradient norm is not finite changes nothing but the
  step count: its update and BatchNorm statistics are dropped, so the state
  never holds a NaN or inf, and its metrics have nonfinite = 1. Whether the
  run then stops or goes on is the training loop's choice
  (config.on_nonfinite).
  """
  def loss_fn(params):
    outputs, updates = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, batch['image'],
        train=True, mutable=['batch_stats', 'intermediates'])
    loss, branch_losses = clan_loss(outputs['branches'], batch['label'],
                                    branch_weights=branch_weights,
                                    label_smoothing=label_smoothing)
    return loss, (outputs, updates, branch_losses)

  (loss, (outputs, updates, branch_losses)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  finite = jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(grads))
  # A model without BatchNorm (plain VGG) has no batch_stats.
  updated = state.apply_gradients(grads=grads, batch_stats=updates.get('batch_stats', {}))
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                           updated, state.replace(step=updated.step))
  labels = batch['label']
  step_metrics = metrics_cls.single_from_model_output(
      loss=loss,
      nonfinite=1.0 - finite.astype(jnp.float32),
      accuracy=topk_correct(outputs['combined'], labels, 1),
      learning_rate=learning_rate_fn(state.step // grad_accum_steps),
      **{f'loss_{b}': v for b, v in branch_losses.items()},
      **{f'accuracy_{b}': topk_correct(logits, labels, 1)
         for b, logits in outputs['branches'].items()},
      **diagnostics.compute(state.params, grads, updates.get('intermediates', {})))
  return new_state, step_metrics


def eval_outputs(state: TrainState, images: jax.Array, *,
                 flip_tta: bool = False) -> dict[str, Any]:
  """The model's eval-mode outputs for normalised images [B, H, W, 3].

  With `flip_tta`, each output is the mean over the images and their
  horizontal mirror images: the mean of each branch's logits [B, K], and the
  mean of the two combined scores [B, K] (not the combination of the mean
  logits), so that 'combined' stays the average of two predictions.

  Returns:
    {'branches': {name: logits [B, K]}, 'combined': [B, K]}, as CLAN returns.
  """
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  outputs = state.apply_fn(variables, images, train=False)
  if flip_tta:
    mirrored = state.apply_fn(variables, jnp.flip(images, axis=2), train=False)
    outputs = jax.tree.map(lambda a, b: (a + b) / 2, outputs, mirrored)
  return outputs


def eval_step(state: TrainState, batch: Mapping[str, jax.Array], *,
              metrics_cls: type[metrics.Collection], flip_tta: bool = False):
  """Metrics of a padded global batch; examples with batch['mask'] == 0 count for nothing.

  `flip_tta`: score the mean over each image and its mirror (see `eval_outputs`).
  """
  outputs = eval_outputs(state, batch['image'], flip_tta=flip_tta)
  return _eval_metrics(outputs, batch, metrics_cls)


def eval_step_with_confusion(state: TrainState, batch: Mapping[str, jax.Array], *,
                             metrics_cls: type[metrics.Collection],
                             flip_tta: bool = False):
  """`eval_step`'s metrics, and the confusion matrix of the combined prediction.

  Returns:
    (metrics, int32 [K, K] counts of the real examples, rows: labels,
    columns: predicted classes).
  """
  outputs = eval_outputs(state, batch['image'], flip_tta=flip_tta)
  return (_eval_metrics(outputs, batch, metrics_cls),
          confusion_matrix(outputs['combined'], batch['label'], batch['mask']))


def _eval_metrics(outputs: Mapping[str, Any], batch: Mapping[str, jax.Array],
                  metrics_cls: type[metrics.Collection]):
  labels = batch['label']
  scores = {**outputs['branches'], COMBINED: outputs['combined']}
  correct = {f'top{k}_{name}': topk_correct(s, labels, k)
             for name, s in scores.items() for k in (1, 5)}
  loss = sum(cross_entropy(logits, labels) for logits in outputs['branches'].values())
  return metrics_cls.single_from_model_output(loss=loss, mask=batch['mask'], **correct)


def confusion_matrix(scores: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
  """Counts of (label, top-1 prediction) pairs: [B, K], [B], [B] -> int32 [K, K].

  Examples with mask == 0 are not counted.
  """
  num_classes = scores.shape[-1]
  # Top-1 as `topk_correct` takes it, so the trace matches top-1 accuracy even on ties.
  predictions = jax.lax.top_k(scores, 1)[1][:, 0]
  true = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32) * (mask[:, None] > 0)
  predicted = jax.nn.one_hot(predictions, num_classes, dtype=jnp.int32)
  return jnp.einsum('bi,bj->ij', true, predicted)


def predict_step(state: TrainState, batch: Mapping[str, jax.Array], *,
                 flip_tta: bool = False) -> dict[str, Any]:
  """Per-example outputs of a global batch {'image': [B, H, W, 3]} (see `eval_outputs`)."""
  return eval_outputs(state, batch['image'], flip_tta=flip_tta)


def jit_train_step(mesh: Mesh, state_sharding, **step_kwargs):
  """`train_step` compiled over `mesh`: batch split on the data axis, state donated."""
  return jax.jit(
      functools.partial(train_step, **step_kwargs),
      in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
      out_shardings=(state_sharding, sharding.replicated(mesh)),
      donate_argnums=0)


def jit_eval_step(mesh: Mesh, state_sharding, *, with_confusion: bool = False,
                  **step_kwargs):
  """`eval_step` (or `eval_step_with_confusion`) compiled over `mesh`."""
  step = eval_step_with_confusion if with_confusion else eval_step
  return _jit_replicated_out(functools.partial(step, **step_kwargs), mesh, state_sharding)


def jit_predict_step(mesh: Mesh, state_sharding, **step_kwargs):
  """`predict_step` compiled over `mesh`; its outputs are replicated (host-readable)."""
  return _jit_replicated_out(functools.partial(predict_step, **step_kwargs), mesh,
                             state_sharding)


def _jit_replicated_out(step, mesh: Mesh, state_sharding):
  return jax.jit(
      step,
      in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
      out_shardings=sharding.replicated(mesh))


def evaluate(eval_step: Callable, state: TrainState, batches: Iterable[Any],
             metrics_cls: type[metrics.Collection]) -> dict[str, float]:
  """Runs `eval_step` over every (padded) global batch; returns the computed metrics.

  Also returns 'num_examples', the number of real (unmasked) examples seen.
  """
  collected = metrics_cls.empty()
  for batch in batches:
    collected = collected.merge(eval_step(state, batch))
  results = {k: float(v) for k, v in collected.compute().items()}
  results['num_examples'] = int(collected.loss.count)
  return results
