"""Keeps the libraries' routine lines, which say nothing to the user, off the console.

Held back: TensorFlow's start-up notice that oneDNN is on (with absl's "All
log messages before absl::InitializeLog()"), JAX's probe for a TPU on a host
without one, the INFO lines TFDS and orbax write for each dataset read and
checkpoint saved, and TFDS's warnings that a dataset is a custom config or is
not prepared yet ("has no dataset_info.json"). Every other warning and error
still shows.

TensorFlow 2.21 writes that notice to stderr while it is imported, before its
logging reads TF_CPP_MIN_LOG_LEVEL (which, as JAX sets it, holds back its
other INFO lines). So importing this module imports TensorFlow (where it is
installed) with that notice held back, and it must be imported before
anything that imports TensorFlow: `program` imports it, and every program
imports `program` first. `install()` filters the rest, once absl's logging is
set up.
"""
import contextlib
import importlib.util
import logging
import os
import pathlib
import sys
import tempfile

from absl import logging as absl_logging

# Lines of TensorFlow's import.
_TENSORFLOW_NOTICES = ('All log messages before absl::InitializeLog() is called',
                       'oneDNN custom operations are on')
# Packages whose INFO lines narrate routine work: a dataset read, a checkpoint saved.
_ROUTINE_INFO_PACKAGES = frozenset({'tensorflow_datasets', 'orbax'})
# The logger of JAX's probes for backends the host lacks ("Unable to initialize
# backend 'tpu'"); a fallback that matters is a warning.
_BACKEND_PROBES = 'jax._src.xla_bridge'
# TFDS's warnings for a synthetic dataset's config and a dataset it is about to prepare.
_ROUTINE_TFDS_WARNINGS = ('Using custom data configuration', 'has no dataset_info.json')


@contextlib.contextmanager
def _stderr_without(dropped: tuple[str, ...]):
  """Holds what is written to file descriptor 2 inside, then passes it on
  without the lines that contain any of `dropped`."""
  try:
    saved = os.dup(2)
  except OSError:  # no stderr: nothing to hold back
    yield
    return
  with tempfile.TemporaryFile() as held:
    sys.stderr.flush()
    os.dup2(held.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      held.seek(0)
      for line in held.read().decode(errors='replace').splitlines(keepends=True):
        if not any(text in line for text in dropped):
          sys.stderr.write(line)
      sys.stderr.flush()


def _is_routine(record: logging.LogRecord) -> bool:
  packages = set(pathlib.PurePath(record.pathname).parts)
  if record.levelno < logging.WARNING:
    return bool(packages & _ROUTINE_INFO_PACKAGES) or record.name == _BACKEND_PROBES
  return 'tensorflow_datasets' in packages and any(
      text in record.getMessage() for text in _ROUTINE_TFDS_WARNINGS)


def install() -> None:
  """Keeps the libraries' routine log records out of absl's log (the console)."""
  absl_logging.get_absl_handler().addFilter(lambda record: not _is_routine(record))


# JAX sets the same default when it is imported, maybe after TensorFlow.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
if 'tensorflow' not in sys.modules and importlib.util.find_spec('tensorflow') is not None:
  with _stderr_without(_TENSORFLOW_NOTICES):
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
