"""Prepares CUB-200-2011, Stanford Cars or FGVC-Aircraft from the user's files.

The command is `python -m clan_jax.cli.prepare_data`. The manual directory
holds the archives (or their extracted folders); each builder's
MANUAL_DOWNLOAD_INSTRUCTIONS (printed when something is missing) say which
files. Nothing is downloaded. `summary` gives the splits and their sizes, and
where they differ from the official ones.
"""

import tensorflow_datasets as tfds

from clan_jax import storage
from clan_jax.data import builder_utils, cub, fgvc_aircraft, stanford_cars
from clan_jax.user_errors import MissingFileError

BUILDERS = {
    'cub': cub.Cub2002011,
    'cars': stanford_cars.StanfordCars,
    'aircraft': fgvc_aircraft.FgvcAircraft,
}

def prepare(dataset: str, manual_dir: str, data_dir: str | None = None,
            config: str | None = None) -> tfds.core.DatasetBuilder:
  """Prepares `dataset` (a key of BUILDERS) and returns its builder."""
  # The shell leaves a tilde after '--flag=' as it is.
  storage.check(data_dir, '--data_dir')
  storage.check(manual_dir, '--manual_dir')
  if data_dir is not None:
    data_dir = str(storage.path(data_dir))
  if not storage.path(manual_dir).is_dir():
    raise MissingFileError(f'--manual_dir={manual_dir}: no such directory.')
  manual_dir = str(storage.path(manual_dir))
  builder = BUILDERS[dataset](data_dir=data_dir, config=config)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir))
  return builder


def summary(builder: tfds.core.DatasetBuilder) -> str:
  """The splits and their sizes, and how they differ from the official ones."""
  counts = {'classes': builder.info.features['label'].num_classes}
  counts.update((name, split.num_examples)
                for name, split in builder.info.splits.items())
  name = builder.name
  if builder.builder_config:
    name += f'/{builder.builder_config.name}'
  lines = [f'{name} prepared in {builder.data_dir}:']
  lines += [f'  {key}: {count:,}' for key, count in counts.items()]
  mismatches = builder_utils.count_mismatches(counts, builder.OFFICIAL_COUNTS)
  if mismatches:
    lines.append('Differs from the official dataset (a partial copy?):')
    lines += [f'  {mismatch}' for mismatch in mismatches]
  else:
    lines.append('All counts match the official dataset.')
  return '\n'.join(lines)
