"""Stop requests: SIGTERM and Ctrl-C ask the training loop to save and exit.

The first SIGINT (Ctrl-C) or SIGTERM sets a flag that the loop reads after
each step: it then saves a checkpoint of that step and returns. A second
Ctrl-C exits at once, without saving.

In a multi-process run, SIGTERM is left to JAX's preemption service, which
`jax.distributed.initialize` starts: it agrees on one step for every process,
and orbax's `reached_preemption` reports it (see `Checkpointer`). A flag set
by one process's own handler could stop it at a step where the others go on.
"""
import os
import signal
import sys
import types

import jax

EXIT_AT_ONCE_STATUS = 130  # the shell's status for a process ended by SIGINT


class StopRequests:
  """Context manager that turns SIGINT and SIGTERM into a stop request.

  `requested` names the signal once one came (e.g. 'SIGTERM'), else None.
  The previous handlers are restored on exit.
  """

  def __init__(self):
    self.requested: str | None = None
    self._previous = {}

  def _handle(self, signum: int, frame: types.FrameType | None) -> None:
    del frame
    name = signal.Signals(signum).name
    if self.requested and signum == signal.SIGINT:
      print('Second Ctrl-C: exiting at once, without saving.', file=sys.stderr, flush=True)
      os._exit(EXIT_AT_ONCE_STATUS)  # pylint: disable=protected-access
    if not self.requested:
      self.requested = name
      again = ' Press Ctrl-C again to exit at once.' if signum == signal.SIGINT else ''
      print(f'{name} received: saving a checkpoint at the end of this step, then '
            f'stopping.{again}', file=sys.stderr, flush=True)

  def __enter__(self) -> 'StopRequests':
    signals = [signal.SIGINT]
    if jax.process_count() == 1:
      signals.append(signal.SIGTERM)
    for signum in signals:
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
