"""One training job per workdir: an owner file, `<workdir>/lock.json`, local or on cloud storage.

Two jobs in one workdir would resume from each other's checkpoints and leave
a model that neither reported. The job's process 0 creates the owner file
with a conditional write through TensorStore (create only if absent: an
exclusive file lock on a local disk, a generation precondition on GCS), so
of two jobs starting together exactly one gets it. Every RENEW_SECONDS the
owner rewrites it (again conditionally: on the version it wrote last), and
it removes it when the job ends.

A job killed without cleaning up (SIGKILL, a preempted VM) leaves the file
behind. Another job finds out whether its owner is gone:
- written on this host: at once, from the process table (pid and start time);
- written on another host (a pod's restart runs on new VMs; the old ones are
  gone): by watching it. A file rewritten within STALE_SECONDS belongs to a
  live job and the workdir is refused; one left unchanged that long is taken
  over, conditionally on the version that was watched, so of two jobs taking
  it over one wins. No clocks are compared.
"""
import contextlib
import datetime
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator

import jax
import tensorstore as ts

from clan_jax import storage
from clan_jax.user_errors import UserError

LOCK_FILE = 'lock.json'
RENEW_SECONDS = 30.0
STALE_SECONDS = 120.0  # four renewals missed
_POLL_SECONDS = 5.0


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


def _alive_here(owner: dict) -> bool:
  """Whether the process named by an owner file written on this host still runs."""
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
          'since': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
          'renewals': 0}


def _parse(value: bytes) -> dict:
  try:
    owner = json.loads(value)
    return owner if isinstance(owner, dict) else {}
  except ValueError:
    return {}  # unreadable: half written by a run killed at that moment


def _reason(error: Exception) -> str:
  return ' '.join(str(error).split())[:300]


class _OwnerFile:
  """`<workdir>/lock.json` through TensorStore's key-value store, with its version."""

  def __init__(self, workdir: str):
    self.path = f'{workdir.rstrip("/")}/{LOCK_FILE}'
    directory = str(storage.absolute(workdir)).rstrip('/') + '/'
    self._store = ts.KvStore.open(directory if storage.is_url(directory)
                                  else f'file://{directory}').result()

  def read(self) -> tuple[dict | None, bytes]:
    """(owner, version): owner None if there is no file."""
    result = self._store.read(LOCK_FILE).result()
    owner = None if result.state == 'missing' else _parse(result.value)
    return owner, result.stamp.generation

  def write(self, owner: dict | None, if_version: bytes) -> bytes | None:
    """Writes (None: deletes) if the file is still at `if_version`; the new version, or None."""
    value = None if owner is None else json.dumps(owner).encode()
    version = self._store.write(LOCK_FILE, value, if_equal=if_version).result().generation
    return version or None


class _Renewal:
  """Rewrites the owner file every RENEW_SECONDS, as long as nobody else has taken it."""

  def __init__(self, file: _OwnerFile, owner: dict, version: bytes):
    self._file, self._owner, self.version = file, owner, version
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True, name='workdir-lock')
    self._thread.start()

  def _run(self) -> None:
    while not self._stop.wait(RENEW_SECONDS):
      self._owner['renewals'] += 1
      try:
        version = self._file.write(self._owner, self.version)
      except ValueError as e:  # storage unreachable for now: the next renewal retries
        print(f'warning: could not renew {self._file.path} ({_reason(e)}).',
              file=sys.stderr, flush=True)
        continue
      if version is None:
        print(f'error: {self._file.path} was taken over by another job after this one did '
              f'not renew it for {STALE_SECONDS:g} s: two jobs now write this workdir; '
              'stop one of them.', file=sys.stderr, flush=True)
        return
      self.version = version

  def stop(self) -> None:
    self._stop.set()
    self._thread.join()


def check_workdir(workdir: str) -> None:
  """Raises a UserError if `workdir` cannot be a directory: a bad URL, or a file in its way."""
  storage.check(workdir, '--workdir')
  if storage.is_url(workdir):
    return  # object stores have no files in the way of a prefix
  path = os.path.expanduser(workdir)
  while path and not os.path.exists(path):
    path = os.path.dirname(path.rstrip(os.sep))
  if path and not os.path.isdir(path):
    raise UserError(f'--workdir={workdir}: {path} is a file, not a directory; name a '
                    'directory (a new one, or a train.py workdir to resume).')


def _refusal(workdir: str, path: str, owner: dict, here: bool) -> UserError:
  where = 'this host' if here else f'host {owner.get("host")}'
  return UserError(
      f'{workdir} is in use by another training run (pid {owner.get("pid")} on {where}, since '
      f'{owner.get("since")}; {path}). Use another --workdir, or wait for that run to end; '
      f'if it is no longer running, delete {path}.')


def _gone(file: _OwnerFile, owner: dict, version: bytes, workdir: str) -> bool:
  """Whether the job that wrote `owner` (at `version`) has ended; False if it may run.

  Raises:
    UserError: the owner is alive.
  """
  me = socket.gethostname()
  if owner.get('host') == me:
    if _alive_here(owner):
      raise _refusal(workdir, file.path, owner, here=True)
    return True
  print(f'{file.path} is held by pid {owner.get("pid")} on host {owner.get("host")}; '
        f'watching it for up to {STALE_SECONDS:g} s to see whether that run is still alive.',
        file=sys.stderr, flush=True)
  deadline = time.monotonic() + STALE_SECONDS
  while time.monotonic() < deadline:
    time.sleep(min(_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
    now, now_version = file.read()
    if now is None:
      return False  # released: try to create it again
    if now_version != version:
      raise _refusal(workdir, file.path, now, here=False)
  return True


def acquire(workdir: str) -> tuple[_OwnerFile, _Renewal]:
  """Makes this process the owner of `workdir`.

  Raises:
    UserError: a live run owns the workdir, a file stands where it should
      be, or the workdir cannot be written.
  """
  check_workdir(workdir)
  try:
    storage.path(workdir).mkdir(parents=True, exist_ok=True)
    file = _OwnerFile(workdir)
    me = _owner()
    for _ in range(3):  # each retry follows a release or a takeover by another job
      owner, version = file.read()
      if owner is not None:
        if not _gone(file, owner, version, workdir):
          continue
        print(f'Taking over {file.path}: its run (pid {owner.get("pid")} on '
              f'{owner.get("host")}, since {owner.get("since")}) is gone.',
              file=sys.stderr, flush=True)
      new_version = file.write(me, version)
      if new_version is not None:
        return file, _Renewal(file, me, new_version)
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # TensorFlow's and TensorStore's I/O errors (permissions, network) have many types.
    raise UserError(f'--workdir={workdir}: cannot write {LOCK_FILE} there '
                    f'({_reason(e)}).') from e
  raise UserError(f'Could not take {file.path}: other runs keep taking it.')


def release(file: _OwnerFile, renewal: _Renewal) -> None:
  """Stops renewing and removes the owner file if this job still owns it."""
  renewal.stop()
  with contextlib.suppress(ValueError):
    file.write(None, renewal.version)


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
  """Owns `workdir` for the duration (process 0 only; other processes share its job)."""
  if jax.process_index() != 0:
    yield
    return
  file, renewal = acquire(workdir)
  try:
    yield
  finally:
    release(file, renewal)
