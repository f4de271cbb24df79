"""One training run per workdir: an owner file, `<workdir>/lock.json`, with the host and pid.

Two runs in one workdir would resume from each other's checkpoints and leave
on disk a model that neither reported. The owner file is created atomically
(O_EXCL) by the run's process 0 and removed when the run ends. A run killed
without cleaning up (SIGKILL, a lost machine) leaves it behind: on the same
host, a file whose process is gone is taken over with a line saying so; a file
from another host cannot be checked, so it is refused with a message saying
how to clear it.
"""
import contextlib
import datetime
import json
import os
import socket
import sys
from collections.abc import Iterator

import jax

from clan_jax.user_errors import UserError

LOCK_FILE = 'lock.json'


def _start_time(pid: int) -> str | None:
  """The start time of process `pid` (Linux: /proc/<pid>/stat field 22), or None.

  Told apart from a later process that reuses the pid.
  """
  try:
    with open(f'/proc/{pid}/stat') as f:
      # The command name (field 2) may hold spaces: split after its ')'.
      return f.read().rsplit(')', 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(owner: dict) -> bool:
  """Whether the process named by an owner file on this host still runs."""
  pid = owner.get('pid')
  if not isinstance(pid, int) or pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # another user's process: alive
  started = owner.get('started')
  return started is None or _start_time(pid) in (None, started)


def _owner() -> dict:
  pid = os.getpid()
  return {'host': socket.gethostname(), 'pid': pid, 'started': _start_time(pid),
          'since': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}


def _read(path: str) -> dict | None:
  try:
    with open(path) as f:
      owner = json.load(f)
    return owner if isinstance(owner, dict) else {}
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}  # unreadable: half written by a run killed at that moment


def check_workdir(workdir: str) -> None:
  """Raises a UserError if `workdir` cannot be a directory: a file is in its way."""
  path = workdir
  while path and not os.path.exists(path):
    path = os.path.dirname(path.rstrip(os.sep))
  if path and not os.path.isdir(path):
    raise UserError(f'--workdir={workdir}: {path} is a file, not a directory; name a '
                    'directory (a new one, or a train.py workdir to resume).')


def acquire(workdir: str) -> str:
  """Makes this process the owner of `workdir`; returns the owner file's path.

  Raises:
    UserError: a live run (or one on another host) owns the workdir, or a
      file stands where it should be.
  """
  check_workdir(workdir)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  me = _owner()
  for _ in range(3):  # each retry follows the removal of a stale file
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      owner = _read(path)
      if owner is None:
        continue  # released meanwhile
      host, pid = owner.get('host'), owner.get('pid')
      if host == me['host'] and not _alive(owner):
        print(f'Taking over {path}: its run (pid {pid}, since {owner.get("since")}) '
              'is gone.', file=sys.stderr, flush=True)
        with contextlib.suppress(FileNotFoundError):
          os.remove(path)
        continue
      where = 'this host' if host == me['host'] else f'host {host}'
      raise UserError(
          f'{workdir} is in use by another training run (pid {pid} on {where}, since '
          f'{owner.get("since")}; {path}). Use another --workdir, or wait for that run '
          f'to end; if it is no longer running, delete {path}.')
    with os.fdopen(fd, 'w') as f:
      json.dump(me, f)
    return path
  raise UserError(f'Could not take {path}: other runs keep creating it.')


def release(path: str) -> None:
  """Removes the owner file if this process still owns it."""
  owner = _read(path)
  if owner and owner.get('pid') == os.getpid() and owner.get('host') == socket.gethostname():
    os.remove(path)


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
  """Owns `workdir` for the duration (process 0 only; other processes share its run)."""
  if jax.process_index() != 0:
    yield
    return
  path = acquire(workdir)
  try:
    yield
  finally:
    release(path)
