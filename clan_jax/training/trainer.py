"""train_and_evaluate: from a config to a trained, checkpointed, evaluated CLAN."""
import math
from typing import Any

from absl import logging
from clu import metric_writers
from flax import traverse_util
import jax
from jax.experimental import multihost_utils
import ml_collections

from clan_jax import sharding, storage
from clan_jax.data import input_pipeline
from clan_jax.training import (config_validation, console, initialization, interrupts,
                               nonfinite, setup, steps)
from clan_jax.user_errors import UserError
from clan_jax.workdir import checkpointing, compatibility, lock, trained_model


def _dataset_builder(config: ml_collections.ConfigDict):
  """The builder of config.data.dataset; process 0 alone generates the synthetic data.

  The other processes wait at a barrier until it has, so that processes
  sharing a data_dir never write the same files.
  """
  if jax.process_count() > 1:
    if jax.process_index() == 0:
      input_pipeline.get_dataset_builder(config)
    multihost_utils.sync_global_devices('clan_jax: dataset prepared')
  return input_pipeline.get_dataset_builder(config)


def _total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  if config.num_train_steps > 0:
    return config.num_train_steps
  return max(1, int(math.ceil(config.num_epochs * steps_per_epoch)))


def _summary_writer(workdir: str) -> metric_writers.MetricWriter:
  """TensorBoard's writer in `workdir` on process 0, none on the others.

  Not clu's default writer, whose LoggingWriter would put every metric on the
  console: that holds `console`'s short lines.
  """
  if jax.process_index() > 0:
    return metric_writers.MultiWriter([])
  return metric_writers.AsyncMultiWriter([metric_writers.SummaryWriter(workdir)])


def hparams(config: ml_collections.ConfigDict) -> dict[str, int | float | str | bool]:
  """Every field of `config` by its dotted name, as TensorBoard's hparams take them."""
  flat = traverse_util.flatten_dict(compatibility.without_old_names(config).to_dict(), sep='.')
  return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat.items()}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes training) in `workdir`, then evaluates on config.data.eval_split.

  Checkpoints go to `workdir/checkpoints`, TensorBoard event files to `workdir`,
  and the config and class names to `workdir/config.json`, `classes.json`.
  The config is checked before anything else, unless `config_validation.validate`
  made it (a ValidConfig), and the workdir is held for the run (`workdir_lock`).

  Resuming restores the newest readable checkpoint (`Checkpointer.
  restore_newest_readable`); the input pipeline restarts at its step, so the
  run ends where an uninterrupted one would, bit for bit on the same devices.
  SIGTERM, Ctrl-C or a preemption notice save a checkpoint of the current step
  and end the run early (see 'stopped' below).

  Returns:
    The final eval metrics (last step, config.data.eval_split). With
    config.data.validation_percent, also 'best_validation_step',
    'best_validation_top1_combined' and 'test_top1_combined_at_best_validation'
    over the evaluations of this run. A run stopped early returns
    {'stopped': a one-line message, 'step': the step saved} instead.

  Raises:
    UserError: a bad config, a workdir held by another run or trained with
      another model, an unreadable checkpoint that may not be skipped, or
      (nonfinite.NonFiniteError) a non-finite step that stops the run.
  """
  config = config_validation.validated(config)
  if config.init.source_pretraining.enabled:
    raise UserError('config.init.source_pretraining.enabled=True is a request that '
                    'clan_jax.experiments.source_pretraining.apply(config) turns into '
                    'config.init.backbone_weights: call it first (train.py and the '
                    'ablation tool do).')
  mesh = sharding.create_mesh(config.mesh)
  sharding.check_batch_size(config.data.batch_size, mesh, 'data.batch_size')
  sharding.check_batch_size(config.data.eval_batch_size, mesh, 'data.eval_batch_size')
  with lock.hold(workdir):
    return _train_and_evaluate(config, workdir, mesh)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        mesh: jax.sharding.Mesh) -> dict[str, Any]:
  checkpoint_dir = storage.path(workdir) / trained_model.CHECKPOINT_DIR
  if checkpoint_dir.exists():
    # Before the data and the model, which a mismatch would waste.
    trained_model.check_same_model(workdir, config)
  builder = _dataset_builder(config)
  num_classes = input_pipeline.num_classes(builder)
  train_split, validation_split = input_pipeline.split_names(config)
  steps_per_epoch = input_pipeline.num_examples(builder, train_split) // config.data.batch_size
  if steps_per_epoch < 1:
    raise UserError(f'config.data.batch_size={config.data.batch_size} is larger than the '
                    f"{input_pipeline.num_examples(builder, train_split)} examples of the "
                    f"'{train_split}' split of {config.data.dataset}.")
  total_steps = _total_steps(config, steps_per_epoch)
  eval_every = max(1, int(config.eval_every_epochs * steps_per_epoch))

  # config.init (pretrained backbone or a trained workdir); a checkpoint in
  # `workdir` (resuming) replaces it below.
  run = setup.create(config, num_classes, mesh, steps_per_epoch=steps_per_epoch,
                     total_steps=total_steps,
                     initialize=lambda state: initialization.initialize(state, config))
  state, branches = run.state, run.branches
  train_metrics_cls, eval_metrics_cls = run.train_metrics_cls, run.eval_metrics_cls
  train_step, eval_step = run.train_step, run.eval_step

  checkpointer = checkpointing.Checkpointer(
      checkpoint_dir, save_every_steps=config.checkpoint.every_steps,
      max_to_keep=config.checkpoint.keep, writer=True)
  if checkpointer.latest_step() is not None:
    state = checkpointer.restore_newest_readable(state, fallback=config.checkpoint.fallback)
    logging.info('Resumed from %s at step %d.', workdir, int(state.step))
  start_step = int(state.step)
  trained_model.save_run_info(workdir, config, input_pipeline.class_names(builder))

  def run_eval(split: str) -> dict[str, float]:
    eval_ds, _ = input_pipeline.create_eval_dataset(config, builder, split)
    batches = sharding.to_global_batches(input_pipeline.as_numpy(eval_ds),
                                         sharding.batch_sharding(mesh))
    return steps.evaluate(eval_step, state, batches, eval_metrics_cls)

  writer = _summary_writer(workdir)
  writer.write_hparams(hparams(config))
  logging.info('%s: %d classes, %d steps of %d images (%d per epoch), branches %s, '
               '%d devices.', config.data.dataset, num_classes, total_steps,
               config.data.batch_size, steps_per_epoch, list(branches), mesh.size)

  if start_step >= total_steps:
    logging.info('Workdir %s already holds the final step %d: evaluating only.',
                 workdir, total_steps)
    eval_results = run_eval(config.data.eval_split)
    writer.flush()
    checkpointer.close()
    return eval_results

  # Global batch k depends on (config.seed, k) alone: a resumed run reads what
  # an uninterrupted one would have.
  train_ds = input_pipeline.create_train_dataset(config, builder, start_step=start_step)
  train_batches = sharding.to_global_batches(
      input_pipeline.as_numpy(train_ds), sharding.batch_sharding(mesh),
      config.data.prefetch_batches)
  progress = console.Console(total_steps, config.data.batch_size, writer)
  guard = nonfinite.NonFiniteGuard(config, checkpointer)
  train_metrics = train_metrics_cls.empty()
  best_on_validation = {}
  try:
    with interrupts.StopRequests() as stop_requests:
      for step in range(start_step + 1, total_steps + 1):
        with jax.profiler.StepTraceAnnotation('train', step_num=step):
          state, step_metrics = train_step(state, next(train_batches))
        guard.add(step, step_metrics)
        guard.check()
        progress.step_done(step)
        train_metrics = train_metrics.merge(step_metrics)
        if step % config.log_every_steps == 0 or step == total_steps:
          guard.check(all_steps=True)
          train_results = train_metrics.compute()
          writer.write_scalars(step, {f'train/{k}': v for k, v in train_results.items()})
          progress.train(step, train_results)
          train_metrics = train_metrics_cls.empty()
        # The last step always evaluates, so `eval_results` ends as the final one.
        if step % eval_every == 0 or step == total_steps:
          with progress.paused():
            eval_results = run_eval(config.data.eval_split)
          writer.write_scalars(step, {f'eval/{k}': v for k, v in eval_results.items()})
          top1 = {config.data.eval_split: eval_results['top1_combined']}
          if validation_split:
            with progress.paused():
              validation = run_eval(validation_split)
            writer.write_scalars(step, {f'validation/{k}': v for k, v in validation.items()})
            top1['validation'] = validation['top1_combined']
            if validation['top1_combined'] > best_on_validation.get(
                'best_validation_top1_combined', -1.0):
              best_on_validation = {
                  'best_validation_step': step,
                  'best_validation_top1_combined': validation['top1_combined'],
                  'test_top1_combined_at_best_validation': eval_results['top1_combined']}
          progress.evaluation(step, top1)
        preempted = checkpointer.reached_preemption(step)
        stop = stop_requests.requested or ('a preemption notice' if preempted else None)
        if stop or step == total_steps or step % config.checkpoint.every_steps == 0:
          guard.check(all_steps=True)  # a stopping step is never saved
          checkpointer.save(step, state, force=bool(stop) or step == total_steps)
        if stop:
          checkpointer.wait_until_finished()
          return {'step': step, 'stopped': (
              f'Stopped by {stop} at step {step}; its checkpoint is in '
              f'{checkpointer.directory}. Run the same command to resume.')}
    checkpointer.wait_until_finished()
  finally:
    writer.flush()
    checkpointer.close()
  eval_results.update(best_on_validation)
  return eval_results
