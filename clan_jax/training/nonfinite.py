"""What the training loop does after a step whose loss or gradient norm is not finite.

The train step (`steps.train_step`) already keeps such an update out of the
state and reports it in its `nonfinite` metric; `NonFiniteGuard` reads that
metric and stops the run or lets it go on, as config.on_nonfinite says.
"""
from absl import logging
import ml_collections

from clan_jax.workdir import checkpointing
from clan_jax.user_errors import UserError


class NonFiniteError(UserError):
  """A step's loss or gradient norm was not finite and config.on_nonfinite='stop'."""


class NonFiniteGuard:
  """Reads each step's `nonfinite` metric one step late, so as not to stall the device.

  The train step itself keeps a non-finite update out of the state; this
  decides whether the run stops (config.on_nonfinite='stop') or goes on with
  a warning ('skip', at most config.max_consecutive_skips in a row).
  """

  def __init__(self, config: ml_collections.ConfigDict, checkpointer: checkpointing.Checkpointer):
    self._stop = config.on_nonfinite == 'stop'
    self._max_skips = config.max_consecutive_skips
    self._checkpointer = checkpointer
    self._pending = []
    self._consecutive = 0

  def add(self, step: int, step_metrics) -> None:
    self._pending.append((step, step_metrics))

  def check(self, *, all_steps: bool = False) -> None:
    """Checks the steps added so far, but the last unless `all_steps`."""
    keep = 0 if all_steps else 1
    while len(self._pending) > keep:
      step, step_metrics = self._pending.pop(0)
      if not float(step_metrics.nonfinite.total):
        self._consecutive = 0
        continue
      self._consecutive += 1
      loss = float(step_metrics.loss.compute())
      what = f'step {step}: the loss ({loss}) or the gradient norm is not finite'
      if self._stop or self._consecutive > self._max_skips:
        self._checkpointer.wait_until_finished()
        last = self._checkpointer.latest_step()
        kept = (f'the last checkpoint, step {last}, is intact' if last is not None
                else 'no checkpoint was saved')
        reason = ("config.on_nonfinite='stop'" if self._stop else
                  f'{self._consecutive} such steps in a row, more than '
                  f'config.max_consecutive_skips={self._max_skips}')
        raise NonFiniteError(
            f'{what}: training stopped ({reason}). Nothing of this step was saved and '
            f'{kept}. Lower config.optim.learning_rate or set config.optim.grad_clip_norm'
            + (", or set config.on_nonfinite='skip' to skip such steps." if self._stop
               else '.'))
      logging.warning('%s: its update was skipped (config.on_nonfinite=\'skip\').', what)
