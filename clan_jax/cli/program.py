"""What every program shares: its flags, its config file, and its one-line `error: ...`.

A `UserError` (clan_jax/user_errors.py) or a bad flag is printed as
`error: <message>` on stderr, without a traceback, and the program exits with
status 2. Any other exception is a bug or an environment failure and keeps its
traceback.

  program.define_config_file('config', 'configs/default.py', 'Training config.')

  def main(argv):
    config = program.config_flag()
    ...

  if __name__ == '__main__':
    program.run(main)
"""
from collections.abc import Callable, Sequence
import os
import sys
from typing import Any, NoReturn

from absl import app, flags
from ml_collections import config_flags

from clan_jax.cli import quiet  # first, before anything imports TensorFlow
from clan_jax import storage
from clan_jax.user_errors import UserError
from clan_jax.workdir import compatibility

EXIT_STATUS = 2


def fail(message: str) -> NoReturn:
  """Prints `error: <message>` to stderr and exits with status 2."""
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(EXIT_STATUS)


# What parsing the command line raises for a bad flag: absl's flags.Error, and
# ml_collections' AttributeError or KeyError for `--config.<field>` of a field
# that the config lacks.
FLAG_ERRORS = (flags.Error, AttributeError, KeyError)


def flag_error_message(error: Exception) -> str:
  """One line for an exception of FLAG_ERRORS."""
  if isinstance(error, flags.Error):
    return str(error)
  # ml_collections wraps a KeyError whose message names the field and
  # suggests the closest one: "'batchsize'\nDid you mean ...".
  detail = error
  while isinstance(detail, BaseException) and detail.args:
    detail = detail.args[0]
  field, _, suggestion = str(detail).partition('\n')
  return ' '.join(f'unknown config field {field}. {suggestion}'.split())


def _is_config_flag(flag: flags.Flag) -> bool:
  # ml_collections exports no type test for its config flags (is_config_flag
  # is in its unexported config_flags.config_flags module); its public
  # getters raise a TypeError for any other flag.
  try:
    config_flags.get_config_filename(flag)
  except TypeError:
    return False
  except flags.Error:  # a config flag whose file is not parsed yet
    pass
  return True


def _grouped_field_hint(message: str, name: str) -> str:
  """' Did you mean --config.<group>.<field>?' when the unknown field of `message`
  is a flat name from before the config was grouped (workdir/compatibility.py)."""
  unknown = message.split("'")
  if len(unknown) < 3 or 'Did you mean' in message:
    return ''
  path = compatibility.FLAT_FIELDS.get(unknown[1])
  return f' Did you mean --{name}.{path}?' if path else ''


def parse_flags(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS
                ) -> list[str]:
  """Parses `argv` into `flag_values`, as absl.app.run does.

  Raises:
    UserError: a bad flag, `--config.<field>` override or config file.
  """
  try:
    return flag_values(argv)
  except FLAG_ERRORS as e:
    message = flag_error_message(e)
    for flag in flag_values:
      if _is_config_flag(flag_values[flag]):
        message += _grouped_field_hint(message, flag)
    raise UserError(message) from e
  except OSError as e:
    # A config file that failed to load, met by one of its overrides.
    files = [arg.split('=', 1) for arg in argv if arg.startswith('--') and '=' in arg]
    for flag, filename in reversed(files):
      name = flag[2:]
      if name in flag_values and _is_config_flag(flag_values[name]):
        raise _config_file_error(name, filename, e) from e
    raise


def define_config_file(name: str, default: str | None, help_string: str, *,
                       flag_values: flags.FlagValues = flags.FLAGS,
                       sys_argv: Sequence[str] | None = None, **kwargs) -> None:
  """`config_flags.DEFINE_config_file`, with a bad `--<name>.<field>` reported as one line.

  ml_collections already reads the overrides in `sys_argv` (default:
  sys.argv) here, when the flag is defined, so a misspelt field fails here.
  """
  try:
    config_flags.DEFINE_config_file(name, default, help_string, flag_values=flag_values,
                                    sys_argv=sys_argv, **kwargs)
  except FLAG_ERRORS as e:
    message = flag_error_message(e)
    fail(message + _grouped_field_hint(message, name))


def _parse_flags(argv: Sequence[str]) -> list[str]:
  try:
    return parse_flags(argv)
  except UserError as e:
    fail(str(e))


def config_flag(name: str = 'config',
                flag_values: flags.FlagValues = flags.FLAGS) -> Any:
  """The value of a config_flags flag; a config file that failed to load is a UserError.

  ml_collections defers a config file's load error to the first use of the
  config, which then raises an OSError.
  """
  config = flag_values[name].value
  if config is None:
    return None
  try:
    getattr(config, 'keys')
  except OSError as e:
    raise _config_file_error(name, config_flags.get_config_filename(flag_values[name]),
                             e) from e
  return config


def _config_file_error(name: str, filename: str, error: OSError) -> UserError:
  # A config flag's value may end with ':<argument for get_config>'.
  if not os.path.exists(filename.split(':')[0]):
    return UserError(f'--{name}={filename}: no such config file.')
  return UserError(f'--{name}={filename}: cannot load the config file: '
                   f'{" ".join(str(error.__cause__ or error).split())}')


def check_storage(*names: str, flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Raises a UserError for the first of the path flags `names` whose URL cannot work.

  Before anything is read or compiled: a scheme nothing serves, a missing bucket.
  """
  for name in names:
    storage.check(flag_values[name].value, f'--{name}')


def run(main: Callable[[list[str]], Any]) -> None:
  """`absl.app.run(main)`, with UserErrors and usage errors printed as one line, exit 2.

  The libraries' routine log lines are kept off the console (`quiet`).
  """
  def guarded(argv):
    quiet.install()
    try:
      return main(argv)
    except (UserError, app.UsageError) as e:
      fail(str(e))

  app.run(guarded, flags_parser=_parse_flags)
