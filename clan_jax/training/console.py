"""The training loop's console: one short line per log step and per evaluation.

  step 150/360: loss 1.2034, top-1 61.5%, lr 0.01, 1,210 images/s, ETA 38s
  evaluation at step 150/360: test top-1 58.44%, validation top-1 60.00%

Every metric goes to TensorBoard (the trainer's summary writer); the console
holds what a person follows a run by. The speed goes to both.
"""
from collections.abc import Callable, Mapping
import contextlib
import time
from typing import Any

from absl import logging
from clu import metric_writers


def _duration(seconds: float) -> str:
  """'38s', '4m05s', '2h07m'."""
  minutes, seconds = divmod(round(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  if hours:
    return f'{hours}h{minutes:02d}m'
  return f'{minutes}m{seconds:02d}s' if minutes else f'{seconds}s'


class Console:
  """Logs the run's progress and writes its speed (`steps_per_sec`, `images_per_sec`).

  Time is measured on the host. The loop reads the metrics at each log step,
  which waits for the device, so the steps between two log lines are done by
  the second.
  """

  def __init__(self, total_steps: int, batch_size: int, writer: metric_writers.MetricWriter,
               clock: Callable[[], float] = time.monotonic):
    """`batch_size` is the global batch; `clock` is for tests."""
    self._total_steps = total_steps
    self._batch_size = batch_size
    self._writer = writer
    self._clock = clock
    self._created = clock()
    self._first = None  # (step, time) when the clock started
    self._last = None  # (step, time) of the previous train line
    self._paused = 0.0  # seconds in `paused()` since the previous train line

  def step_done(self, step: int) -> None:
    """Call after each train step: the first call starts the clock, so that
    compiling the step does not count as training time."""
    if self._first is None:
      self._first = self._last = (step, self._clock())

  @contextlib.contextmanager
  def paused(self):
    """Time inside (an evaluation) is not training: images/s leaves it out.

    The ETA keeps it, as evaluations recur until the end.
    """
    start = self._clock()
    try:
      yield
    finally:
      self._paused += self._clock() - start

  def train(self, step: int, results: Mapping[str, Any]) -> None:
    """Logs the line of log step `step` from the train metrics of the steps since the last."""
    # The values first: reading them waits for the device.
    loss, top1, lr = (float(results[k]) for k in ('loss', 'accuracy', 'learning_rate'))
    now = self._clock()
    line = f'step {step}/{self._total_steps}: loss {loss:.4f}, top-1 {top1:.1%}, lr {lr:.3g}'
    (first_step, first_time), (last_step, last_time) = self._first, self._last
    if step > last_step:
      steps_per_sec = (step - last_step) / max(now - last_time - self._paused, 1e-9)
      images_per_sec = steps_per_sec * self._batch_size
      eta = (self._total_steps - step) * (now - first_time) / (step - first_step)
      line += f', {images_per_sec:,.0f} images/s, ETA {_duration(eta)}'
      self._writer.write_scalars(step, {'steps_per_sec': steps_per_sec,
                                        'images_per_sec': images_per_sec,
                                        'uptime': now - self._created})
    logging.info('%s', line)
    self._last, self._paused = (step, now), 0.0

  def evaluation(self, step: int, top1: Mapping[str, float]) -> None:
    """Logs the top-1 (all branches combined) of each split evaluated at `step`, by name."""
    logging.info('evaluation at step %d/%d: %s', step, self._total_steps,
                 ', '.join(f'{split} top-1 {value:.2%}' for split, value in top1.items()))
