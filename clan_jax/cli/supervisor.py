"""A process of a multi-process job, run under a supervisor: a lost peer ends it in one line.

When one process of a job dies (kill -9, the out-of-memory killer, its host
gone), JAX's distributed runtime ends the others: at once where the dead one
was process 0 (its coordinator), else when the coordinator has missed the dead
one's heartbeats for `heartbeat_timeout_seconds`, a process blocked in a
collective waiting until then. It ends them from C++, with abort() and a wall
of C++ and Python stack frames. Nothing inside the process can turn that into
a message: jaxlib 0.10's hook for it (`missed_heartbeat_callback`) aborts with
std::bad_cast when it is called.

So `train.py --distributed` runs its training in a child process with the same
command line and watches it. The child's stdout is the parent's; its stderr is
passed through line by line until the runtime's fatal error or a traceback
begins, which are held back. When the child ends, the parent either passes the
held lines on (a bug keeps its traceback), or, where they show that a peer was
lost, writes them to `<workdir>/logs/` and prints one line naming the lost
process and the last complete checkpoint, with status LOST_PROCESS_STATUS.

SIGINT and SIGTERM sent to the parent are passed to the child (which saves and
stops, see clan_jax/training/interrupts.py); the child, in a session of its own,
gets them only that way, and exits when the parent dies.
"""
import collections
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import NoReturn

from absl import flags

SUPERVISED_ENV = 'CLAN_JAX_SUPERVISED'
# EX_TEMPFAIL: a temporary failure, which restarting the job is the remedy for.
LOST_PROCESS_STATUS = 75

# What follows these is the runtime ending the process: held off the console.
_FATAL_START = re.compile(
    r'^[EF]\d{4} [\d:.]+ +\d+ (coordination_service|client\.h|preemption_sync_manager)'
    r'|^Traceback \(most recent call last\)|^Fatal Python error')
# Held lines that show a peer was lost, not a bug of this process.
_PEER_LOST = re.compile(r'JAX distributed service detected fatal errors|Gloo \S+ failed'
                        r'|Connection reset by peer|coordination service')
# The coordination service's words for the processes it lost: a list, one per
# line, as `1` or `/job:jax_worker/replica:0/task:1`, and `Task 1 heartbeat timeout`.
_UNHEALTHY_LIST = re.compile(r'unhealthy \(stopped sending heartbeats\):(.*?)The tasks have',
                             re.S)
_LISTED_TASK = re.compile(r'(\d+)\s*$', re.M)
_TIMED_OUT_TASK = re.compile(r'Task (\d+) heartbeat timeout')
_KEPT_LINES = 5000  # of the child's stderr, for the log of a lost job
_PARENT_POLL_SECONDS = 0.5


def is_supervised() -> bool:
  return os.environ.get(SUPERVISED_ENV) == '1'


def exit_with_parent() -> None:
  """In the child: exits as soon as the supervising parent is gone (e.g. kill -9)."""
  parent = os.getppid()

  def watch():
    while os.getppid() == parent:
      time.sleep(_PARENT_POLL_SECONDS)
    os._exit(LOST_PROCESS_STATUS)  # pylint: disable=protected-access
  threading.Thread(target=watch, name='exit_with_parent', daemon=True).start()


def supervise_if_distributed(argv: list[str], *, default_workdir: str) -> None:
  """With --distributed in `argv` (and not yet supervised), `run`s; else returns.

  Reads only --distributed and --workdir, as absl would; the child parses and
  checks the whole command line, and reports a bad flag itself.
  """
  if is_supervised():
    return
  values = flags.FlagValues()
  flags.DEFINE_bool('distributed', False, '', flag_values=values)
  flags.DEFINE_string('workdir', default_workdir, '', flag_values=values)
  try:
    values(argv, known_only=True)
  except flags.Error:
    return
  if values.distributed:
    run(values.workdir)


def run(workdir: str) -> NoReturn:
  """Runs this program's own command line again as a supervised child; exits as it does."""
  child = subprocess.Popen([sys.executable, *sys.orig_argv[1:]],
                           env={**os.environ, SUPERVISED_ENV: '1'}, stderr=subprocess.PIPE,
                           text=True, errors='replace', start_new_session=True)
  for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, lambda signum, frame: child.send_signal(signum))
  kept = collections.deque(maxlen=_KEPT_LINES)
  held = []
  for line in child.stderr:
    kept.append(line)
    if held or _FATAL_START.match(line):
      held.append(line)
    else:
      sys.stderr.write(line)
      sys.stderr.flush()
  status = child.wait()
  held_text = ''.join(held)
  if status == 0 or not _PEER_LOST.search(held_text):
    sys.stderr.write(held_text)
    if status < 0:  # killed by a signal: this process's own training is lost
      print(f'error: the training process (pid {child.pid}) was killed by '
            f'{signal.Signals(-status).name}. {_resume_hint(workdir)}',
            file=sys.stderr, flush=True)
      sys.exit(LOST_PROCESS_STATUS)
    sys.exit(status)
  log = _write_log(workdir, ''.join(kept))
  print(f'error: the job lost {_lost_process(held_text)}. {_resume_hint(workdir)} '
        f'Details: {log}', file=sys.stderr, flush=True)
  sys.exit(LOST_PROCESS_STATUS)


def _lost_process(text: str) -> str:
  """Which process the runtime's messages in `text` name as lost."""
  tasks = set(_TIMED_OUT_TASK.findall(text))
  for listed in _UNHEALTHY_LIST.findall(text):
    tasks.update(_LISTED_TASK.findall(listed))
  if tasks:
    return 'process ' + ', '.join(sorted(tasks, key=int)) + ' (its heartbeats stopped)'
  if 'PollForError' in text or 'Socket closed' in text:
    return 'process 0, the coordinator (its connection closed)'
  return 'another process (a collective failed)'


def _resume_hint(workdir: str) -> str:
  # Imported here: the supervisor itself needs neither orbax, JAX nor a file
  # system layer unless the job fails.
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from clan_jax import storage  # pylint: disable=g-import-not-at-top
  from clan_jax.workdir import trained_model  # pylint: disable=g-import-not-at-top
  directory = storage.path(workdir) / trained_model.CHECKPOINT_DIR
  try:
    steps = ocp.utils.checkpoint_steps(directory) if directory.exists() else []
  except OSError:
    steps = []
  if not steps:
    return f'No checkpoint is complete in {directory}: restarting the job starts at step 0.'
  return (f'The last complete checkpoint is step {max(steps)} in {directory}: '
          'restart the job (every process, same command) to resume from it.')


def _write_log(workdir: str, text: str) -> str:
  """Writes `text` to <workdir>/logs/lost-<host>-<pid>.txt; returns where it went."""
  from clan_jax import storage  # pylint: disable=g-import-not-at-top
  name = f'lost-{socket.gethostname()}-{os.getpid()}.txt'
  for directory in (storage.path(workdir) / 'logs', storage.path('/tmp')):
    try:
      directory.mkdir(parents=True, exist_ok=True)
      (directory / name).write_text(text)
      return str(directory / name)
    except OSError:
      continue
  return 'not written (no writable directory)'
