"""Mistakes of the user's, and how the programs report them: `error: ...`, exit status 2.

A `UserError` is something the user can fix (a config value, a file, a
workdir); its message is one line naming what is wrong and what is allowed.
The programs print it without a traceback. Any other exception is a bug or an
environment failure and keeps its traceback.

  if __name__ == '__main__':
    user_errors.run(main)
"""
from collections.abc import Callable, Sequence
import os
import sys
from typing import Any, NoReturn

from absl import app, flags

EXIT_STATUS = 2


class UserError(ValueError):
  """A mistake in what the user gave: a config value, a file, a workdir.

  A ValueError, so that code written against the library's earlier ValueErrors
  still catches it.
  """


class MissingFileError(UserError, FileNotFoundError):
  """A file or directory that the user named, or that a step the user took should have made, is missing."""


def fail(message: str) -> NoReturn:
  """Prints `error: <message>` (its first line if several) and exits with status 2."""
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(EXIT_STATUS)


def _parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing, with a bad flag or config override reported as one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e))
  except (AttributeError, KeyError) as e:
    # ml_collections raises these for `--config.<field>` of a field the config
    # lacks; its message already suggests the closest field.
    fail('unknown config field: ' + ' '.join(str(e.args[0] if e.args else e)
                                             .strip('\'"').split()))
  raise AssertionError('unreachable')


def config_flag(name: str = 'config') -> Any:
  """The value of a config_flags flag; a config file that failed to load is a UserError.

  ml_collections defers a config file's load error to the first use of the
  config, which then raises an OSError.
  """
  config = flags.FLAGS[name].value
  if config is None:
    return None
  try:
    getattr(config, 'keys')
  except OSError as e:
    filename = flags.FLAGS[name].config_filename
    if not os.path.exists(filename.split(':')[0]):
      raise UserError(f'--{name}={filename}: no such config file.') from e
    raise UserError(f'--{name}={filename}: cannot load the config file: '
                    f'{" ".join(str(e.__cause__ or e).split())}') from e
  return config


def run(main: Callable[[list[str]], Any]) -> None:
  """`absl.app.run(main)`, with UserErrors and usage errors printed as one line, exit 2."""
  def guarded(argv):
    try:
      return main(argv)
    except (UserError, app.UsageError) as e:
      fail(str(e))

  app.run(guarded, flags_parser=_parse_flags)
