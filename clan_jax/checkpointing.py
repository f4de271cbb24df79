"""Orbax checkpoints of the train state: the only module that calls orbax.

Saves are asynchronous and atomic (orbax writes to a temporary directory and
renames it when complete), so an interrupted or failed save never replaces a
good checkpoint.
"""
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Periodic, keep-N checkpoints of a train state in `directory`."""

  def __init__(self, directory: str, *, save_every_steps: int,
               max_to_keep: int | None):
    self._manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(
            save_interval_steps=save_every_steps, max_to_keep=max_to_keep,
            create=True, enable_async_checkpointing=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Saves if `step` is on the save interval (always when `force`)."""
    return self._manager.save(step, args=ocp.args.StandardSave(state), force=force)

  def restore(self, target: Any, step: int | None = None, *, partial: bool = False) -> Any:
    """Restores `step` (default: the latest) as arrays shaped, typed and sharded like `target`.

    `target` holds arrays or jax.ShapeDtypeStructs with shardings. With
    `partial`, it may be a subtree of what was saved, as a nested dict (e.g.
    only 'step', 'params' and 'batch_stats' of a train state), and only that
    is read: the rest of the checkpoint, such as an optimizer state of
    another structure, is never matched against anything.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'No checkpoint in {self._manager.directory}.')
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target)
    if partial:
      args = ocp.args.PyTreeRestore(
          item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
          partial_restore=True)
    else:
      args = ocp.args.StandardRestore(abstract)
    return self._manager.restore(step, args=args)

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
