r"""Prepares CUB-200-2011, Stanford Cars or FGVC-Aircraft from the user's files.

  python -m clan_jax.cli.prepare_data --dataset=cub --manual_dir=~/datasets/cub \
      [--data_dir=~/tensorflow_datasets]

The manual directory holds the archives (or their extracted folders); each
builder's MANUAL_DOWNLOAD_INSTRUCTIONS (printed when something is missing) say
which files. Nothing is downloaded. Ends by printing the splits and their
sizes, and where they differ from the official ones.
"""
from collections.abc import Sequence

from absl import app, flags

from clan_jax.cli import program
from clan_jax.data import prepare

_DATASET = flags.DEFINE_enum('dataset', None, list(prepare.BUILDERS),
                             'The dataset to prepare.', required=True)
_MANUAL_DIR = flags.DEFINE_string(
    'manual_dir', None, 'Directory with the dataset\'s archives or extracted '
    'folders.', required=True)
_DATA_DIR = flags.DEFINE_string(
    'data_dir', None, 'TFDS data directory to write to (config.data.data_dir of '
    'training); default: TFDS\'s, ~/tensorflow_datasets.')
_CONFIG = flags.DEFINE_string(
    'config', None, 'Builder config, for FGVC-Aircraft: variant (default, '
    'copyright banner cropped) or variant_with_banner.')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  builder = prepare.prepare(_DATASET.value, _MANUAL_DIR.value, _DATA_DIR.value,
                    _CONFIG.value)
  print(prepare.summary(builder))


if __name__ == '__main__':
  program.run(main)
