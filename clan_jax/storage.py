"""The paths a user gives, local or on cloud storage, through one file-system layer.

Every path a program takes from a flag or a config field (workdirs, data
directories, checkpoints, weights, outputs) is opened through `path()`, an
`etils.epath.Path`. `os.path` and `open` must not see them: `os.path.abspath`
turns 'gs://b/run' into '<cwd>/gs:/b/run', a local folder, without an error.

Who serves a `gs://` path: epath, TFDS and TensorBoard go through TensorFlow's
file system (`tf.io.gfile`, whose GCS client is built in); orbax writes the
arrays of a checkpoint through TensorStore's own GCS driver and the
workdir's lock uses TensorStore's conditional writes. Both read the standard
Google credentials. A URL scheme that TensorFlow does not serve is refused by
`check` before anything is read.
"""
import contextlib
import os
import tempfile
from collections.abc import Iterator

from etils import epath
from PIL import Image

from clan_jax.user_errors import UserError

# The URL schemes that every layer above serves: TensorFlow's file system and
# TensorStore (orbax's arrays). Others would fail halfway through a run.
SCHEMES = ('gs',)
# What would serve the schemes that people ask for, for the error message.
_PACKAGES = {'s3': 'the package tensorflow-io; TensorFlow dropped s3:// in 2.6',
             'az': 'the package tensorflow-io', 'hdfs': 'the package tensorflow-io'}


def is_url(value: str | os.PathLike) -> bool:
  return '://' in os.fspath(value)


def path(value: str | os.PathLike) -> epath.Path:
  """`value` as a path: a URL as it is, a local path with `~` expanded."""
  value = os.fspath(value)
  return epath.Path(value if is_url(value) else os.path.expanduser(value))


def absolute(value: str | os.PathLike) -> epath.Path:
  """`path(value)`, made absolute if it is local (orbax wants absolute paths)."""
  value = os.fspath(value)
  return path(value) if is_url(value) else epath.Path(os.path.abspath(os.path.expanduser(value)))


def check(value: str | os.PathLike | None, field: str) -> None:
  """Raises a UserError if `value` is a URL that cannot work: its scheme or its bucket.

  Local paths pass: whether they exist is each field's own rule. Costs one
  request per URL (the bucket's metadata).

  Raises:
    UserError: the scheme is not served, or the bucket does not exist or
      cannot be reached; names `field` and the value.
  """
  if value is None or not is_url(value):
    return
  value = os.fspath(value)
  scheme, rest = value.split('://', 1)
  if scheme not in SCHEMES:
    need = f' (it needs {_PACKAGES[scheme]})' if scheme in _PACKAGES else ''
    raise UserError(f'{field}={value}: no installed file system serves {scheme}://{need}; '
                    f'use a local path or {" or ".join(s + "://" for s in SCHEMES)}.')
  bucket = rest.split('/', 1)[0]
  if not bucket:
    raise UserError(f'{field}={value}: the URL names no bucket ({scheme}://BUCKET/...).')
  try:
    found = epath.Path(f'{scheme}://{bucket}').exists()
  except Exception as e:  # pylint: disable=broad-except
    # The file system's errors (credentials, network) have many types.
    raise UserError(f'{field}={value}: cannot reach the bucket {bucket} '
                    f'({" ".join(str(e).split())[:300]}).') from e
  if not found:
    raise UserError(f'{field}={value}: the bucket {bucket} does not exist (or these '
                    'credentials cannot see it).')


def write_image(image: Image.Image, value: str | os.PathLike) -> None:
  """Writes `image` as a PNG to `value` (PIL's own save would take it for a local path)."""
  with path(value).open('wb') as f:
    image.save(f, format='PNG')


@contextlib.contextmanager
def local_copy(value: str | os.PathLike) -> Iterator[str]:
  """A local path with the content of the file `value`: itself, or a temporary copy of a URL.

  For readers that take only local file names.
  """
  if not is_url(value):
    yield os.path.expanduser(os.fspath(value))
    return
  with tempfile.TemporaryDirectory() as directory:
    local = os.path.join(directory, path(value).name)
    path(value).copy(local)
    yield local
