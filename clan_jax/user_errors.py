"""Mistakes of the user's: the exception types every package raises for them.

A `UserError` is something the user can fix (a config value, a file, a
workdir); its message is one line naming what is wrong and what is allowed.
The programs (clan_jax/cli/program.py) print it as `error: <message>`, without
a traceback, and exit with status 2. Any other exception is a bug or an
environment failure and keeps its traceback.

The ground floor of the package: it imports nothing, so every layer may raise
these.
"""


class UserError(ValueError):
  """A mistake in what the user gave: a config value, a file, a workdir.

  A ValueError, so that code written against the library's earlier ValueErrors
  still catches it.
  """


class MissingFileError(UserError, FileNotFoundError):
  """Missing: a file or directory the user named, or one a step of theirs should have made."""
