"""Orbax checkpoints of the train state: the only module that calls orbax.

Saves are asynchronous and atomic (orbax writes to a temporary directory and
renames it when complete), and keep-N deletes old checkpoints only after the
new one is complete, so an interrupted or failed save never replaces a good
checkpoint. A checkpoint damaged afterwards (truncated files, a lost item) is
found when it is restored: `restore_newest_readable` then falls back to the
newest one that reads.
"""
import sys
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from clan_jax import storage
from clan_jax.user_errors import UserError

UNREADABLE_PREFIX = 'unreadable_'


def _reason(error: Exception) -> str:
  """An exception as one short line: its type and the first line of its message."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return f'{type(error).__name__}: {lines[0][:300]}' if lines else type(error).__name__


class Checkpointer:
  """Periodic, keep-N checkpoints of a train state in `directory`.

  With `writer=True` (the training run, which holds the workdir's lock) it
  also clears the temporary directories that a killed save leaves behind.
  """

  def __init__(self, directory: str, *, save_every_steps: int,
               max_to_keep: int | None, writer: bool = False):
    self._manager = ocp.CheckpointManager(
        storage.absolute(directory),
        options=ocp.CheckpointManagerOptions(
            save_interval_steps=save_every_steps, max_to_keep=max_to_keep,
            create=True, cleanup_tmp_directories=writer,
            enable_async_checkpointing=True))

  @property
  def directory(self) -> str:
    return str(self._manager.directory)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Saves if `step` is on the save interval or a preemption point (always when `force`)."""
    saved = self._manager.save(step, args=ocp.args.StandardSave(state), force=force)
    if saved:
      logging.info('Saving checkpoint of step %d in %s.', step, self.directory)
    return saved

  def reached_preemption(self, step: int) -> bool:
    """True when JAX's preemption notice (TPU, multi-process runs) reached `step`."""
    return self._manager.reached_preemption(step)

  def restore(self, target: Any, step: int | None = None, *, partial: bool = False) -> Any:
    """Restores `step` (default: the latest) as arrays shaped, typed and sharded like `target`.

    `target` holds arrays or jax.ShapeDtypeStructs with shardings. With
    `partial`, it may be a subtree of what was saved, as a nested dict (e.g.
    only 'step', 'params' and 'batch_stats' of a train state), and only that
    is read: the rest of the checkpoint, such as an optimizer state of
    another structure, is never matched against anything.

    Raises:
      UserError: there is no checkpoint, or it cannot be read; names its path.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise UserError(f'No checkpoint in {self.directory}.')
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target)
    try:
      if partial:
        args = ocp.args.PyTreeRestore(
            item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
            partial_restore=True)
      else:
        args = ocp.args.StandardRestore(abstract)
      return self._manager.restore(step, args=args)
    except Exception as e:  # pylint: disable=broad-except
      # orbax, tensorstore and json raise many kinds for damaged files.
      raise UserError(f'checkpoint {self.directory}/{step} cannot be '
                      f'read ({_reason(e)}).') from e

  def restore_newest_readable(self, target: Any, *, fallback: bool) -> Any:
    """Restores the newest checkpoint that can be read (see `restore`).

    Each newer one that cannot is reported in one line and, once an older one
    has been read, moved aside to `unreadable_<step>` so that training can
    save that step again. With `fallback=False` an unreadable newest
    checkpoint is an error instead.

    Raises:
      UserError: none can be read, or the newest cannot and not `fallback`.
    """
    unreadable = []
    for step in reversed(self.all_steps()):
      try:
        state = self.restore(target, step)
      except UserError as e:
        if not fallback:
          raise UserError(f'{e} config.checkpoint.fallback=False forbids resuming from '
                          'an older checkpoint: move it away, or set it to True.') from e
        print(f'warning: {e} Trying the previous one.', file=sys.stderr, flush=True)
        unreadable.append(step)
        continue
      for bad in unreadable:
        self._move_aside(bad)
      if unreadable:
        if jax.process_count() > 1:  # process 0 moved them
          multihost_utils.sync_global_devices('clan_jax: unreadable checkpoints moved')
        self._manager.reload()
        print(f'Resuming from step {step}, the newest checkpoint that can be read.',
              file=sys.stderr, flush=True)
      return state
    raise UserError(f'None of the checkpoints {self.all_steps()} in {self.directory} can '
                    'be read; see the lines above. Use a new --workdir.')

  def _move_aside(self, step: int) -> None:
    if jax.process_index() != 0:
      return
    source = self._manager.directory / str(step)
    target = self._manager.directory / f'{UNREADABLE_PREFIX}{step}'
    suffix = 1
    while target.exists():
      target = self._manager.directory / f'{UNREADABLE_PREFIX}{step}.{suffix}'
      suffix += 1
    source.rename(target)
    logging.warning('Moved the unreadable checkpoint %s to %s.', source, target)

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
