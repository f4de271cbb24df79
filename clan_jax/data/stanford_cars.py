"""Stanford Cars as a TFDS dataset, from the files the user already has.

196 car models (make, model, year), 8,144 training and 8,041 test images, one
bounding box each. TFDS's own `cars196` cannot download any more (its address
is dead), and the copies that circulate keep the same files in different
places. `_LAYOUTS` lists where each copy keeps each file; the builder reads
the manual directory as it is, in the first layout whose files are all there:

  devkit: the official files (each folder extracted or as its archive, the
    test labels that were published after the challenge beside them), or
    Kaggle's copy of them: cars_train/cars_train/, cars_test/cars_test/,
    car_devkit/devkit/ and `cars_test_annos_withlabels (1).mat`.
  all-in-one: cars_annos.mat (every image, with a `test` flag and the class
    names) and car_ims/ (or car_ims.tgz).

  python -m clan_jax.cli.prepare_data --dataset=cars --manual_dir=PATH
"""
from collections.abc import Mapping, Sequence
import dataclasses
import posixpath

from etils import epath
import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from clan_jax.data import builder_utils
from clan_jax.user_errors import MissingFileError, UserError

_TEST_LABELS = 'cars_test_annos_withlabels.mat'
_BOX_FIELDS = ('bbox_x1', 'bbox_y1', 'bbox_x2', 'bbox_y2')


@dataclasses.dataclass(frozen=True)
class _Wanted:
  """A file or folder that the builder reads, and where the copies keep it."""
  what: str  # what it holds, for messages
  # Relative to the manual directory, in order of preference; the first also
  # names the file in messages.
  paths: tuple[str, ...]
  # In the manual directory, holding one of `paths`; extracted when none of
  # them is there.
  archives: tuple[str, ...] = ()

  @property
  def name(self) -> str:
    return posixpath.basename(self.paths[0])

  def tried(self) -> tuple[str, ...]:
    return self.paths + self.archives

  def find(self, dl_manager: tfds.download.DownloadManager,
           manual_dir: epath.Path) -> epath.Path | None:
    return builder_utils.find(dl_manager, manual_dir, self.paths,
                              archives=self.archives)


@dataclasses.dataclass(frozen=True)
class _Layout:
  """One format of the metadata: the files its reader takes, by keyword."""
  description: str
  files: Mapping[str, _Wanted]


# A new copy's layout is one more path in each tuple. Kaggle nests every folder
# in another (cars_train/cars_train/, car_devkit/devkit/): where the outer one
# has the official name, the nested path comes first. Metadata is looked for
# before the images, so that an incomplete layout is told apart without
# extracting gigabytes.
_DEVKIT = _Layout(
    'devkit: the official files, extracted or as their archives, or Kaggle\'s '
    'copy of them',
    {
        'meta_file': _Wanted(
            'the class names', ('devkit/cars_meta.mat',
                                'car_devkit/devkit/cars_meta.mat'),
            ('car_devkit.tgz',)),
        'train_annos': _Wanted(
            'the training labels', ('devkit/cars_train_annos.mat',
                                    'car_devkit/devkit/cars_train_annos.mat'),
            ('car_devkit.tgz',)),
        'test_annos': _Wanted(
            'the test labels; the devkit\'s cars_test_annos.mat has none',
            (_TEST_LABELS, 'cars_test_annos_withlabels (1).mat',
             f'devkit/{_TEST_LABELS}', f'car_devkit/devkit/{_TEST_LABELS}')),
        'train_dir': _Wanted('the training images',
                             ('cars_train/cars_train', 'cars_train'),
                             ('cars_train.tgz',)),
        'test_dir': _Wanted('the test images',
                            ('cars_test/cars_test', 'cars_test'),
                            ('cars_test.tgz',)),
    })
_ALL_IN_ONE = _Layout(
    'all-in-one: every image in one folder, one annotation file',
    {
        'annos_file': _Wanted('the labels, splits and class names',
                              ('cars_annos.mat',)),
        'image_dir': _Wanted('the images of cars_annos.mat', ('car_ims',),
                              ('car_ims.tgz',)),
    })
# In order of preference.
_LAYOUTS = (_DEVKIT, _ALL_IN_ONE)


def _instructions() -> str:
  """MANUAL_DOWNLOAD_INSTRUCTIONS, from `_LAYOUTS`, so that they stay true."""
  lines = [
      'The original site (ai.stanford.edu/~jkrause/cars) is offline; copies',
      'circulate (e.g. on Kaggle). Put one in the manual directory as it is.',
      'Each file is looked for at these paths, in order (an archive last):',
  ]
  for layout in _LAYOUTS:
    lines += ['', f'{layout.description}:']
    lines += [f'  {wanted.name} ({wanted.what}): {", ".join(wanted.tried())}'
              for wanted in layout.files.values()]
  return '\n'.join(lines) + '\n'


def _locate(dl_manager: tfds.download.DownloadManager,
            manual_dir: epath.Path) -> tuple[_Layout, dict[str, epath.Path]]:
  """The first layout whose files are all in manual_dir, and their paths.

  Raises:
    MissingFileError: no layout is complete; the message names the first file
      missing from the layout that has the most (the first of those on ties).
  """
  nearest = None  # (files found, the first one missing) of the best layout
  for layout in _LAYOUTS:
    paths = {}
    for keyword, wanted in layout.files.items():
      path = wanted.find(dl_manager, manual_dir)
      if path is None:
        if nearest is None or len(paths) > nearest[0]:
          nearest = (len(paths), wanted)
        break
      paths[keyword] = path
    else:
      return layout, paths
  _, missing = nearest
  raise MissingFileError(
      f'Stanford Cars: {manual_dir} has no {missing.name} ({missing.what}); '
      f'tried {", ".join(missing.tried())}.')


class StanfordCars(tfds.core.GeneratorBasedBuilder):
  """Stanford Cars: 196 classes of cars, the official train/test split."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  OFFICIAL_COUNTS = {'classes': 196, 'train': 8_144, 'test': 8_041}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions()

  def _info(self) -> tfds.core.DatasetInfo:
    return builder_utils.dataset_info(
        self, __doc__, 'https://ai.stanford.edu/~jkrause/cars/car_dataset.html')

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    layout, paths = _locate(dl_manager, builder_utils.manual_dir(dl_manager))
    read = self._devkit if layout is _DEVKIT else self._all_in_one
    return self._generators(*read(**paths))

  def _generators(self, splits: dict[str, tuple[list, epath.Path]],
                  names_file: epath.Path):
    num_classes = self.info.features['label'].num_classes
    for annotations, listed_in in splits.values():
      for annotation in annotations:
        if not 0 <= annotation.label < num_classes:
          raise UserError(
              f'{listed_in}: image {annotation.id} has class '
              f'{annotation.label + 1}, but {names_file} names '
              f'{num_classes} classes. The files are from different copies.')
    builder_utils.warn_on_count_mismatches(
        self.name, {'classes': num_classes,
                    **{split: len(annotations)
                       for split, (annotations, _) in splits.items()}},
        self.OFFICIAL_COUNTS)
    return {split: self._generate_examples(annotations, str(listed_in))
            for split, (annotations, listed_in) in splits.items()}

  def _all_in_one(self, annos_file: epath.Path, image_dir: epath.Path):
    """cars_annos.mat: all 16,185 images, relative_im_path 'car_ims/...'."""
    mat = _load_mat(annos_file, ['annotations', 'class_names'])
    builder_utils.set_class_names(self, _strings(mat['class_names']),
                                  annos_file)
    annotations = _records(annos_file, mat['annotations'],
                           ('relative_im_path', 'class', 'test'))
    splits = {'train': [], 'test': []}
    for record in annotations:
      relative_path = _item(record['relative_im_path'])
      split = 'test' if _item(record['test']) else 'train'
      splits[split].append(_annotation(
          record, image_dir.parent / relative_path, relative_path))
    return ({split: (items, annos_file) for split, items in splits.items()},
            annos_file)

  def _devkit(self, meta_file: epath.Path, train_annos: epath.Path,
              test_annos: epath.Path, train_dir: epath.Path,
              test_dir: epath.Path):
    """The official devkit files: one annotation file and folder per split."""
    builder_utils.set_class_names(
        self, _strings(_load_mat(meta_file, ['class_names'])['class_names']),
        meta_file)
    splits = {}
    for split, annos_file, image_dir in (('train', train_annos, train_dir),
                                         ('test', test_annos, test_dir)):
      records = _records(
          annos_file, _load_mat(annos_file, ['annotations'])['annotations'],
          ('fname', 'class'))
      splits[split] = ([
          _annotation(record, image_dir / _item(record['fname']),
                      f'{image_dir.name}/{_item(record["fname"])}')
          for record in records], annos_file)
    return splits, meta_file

  def _generate_examples(self, annotations: list[builder_utils.Annotation],
                         listed_in: str):
    return builder_utils.generate_examples(annotations, listed_in=listed_in)


def _load_mat(path: epath.Path, variables: Sequence[str]) -> dict:
  """The variables of a MATLAB file; errors name the file and the fix."""
  try:
    with path.open('rb') as f:
      mat = scipy.io.loadmat(f)
  except (ValueError, TypeError, OSError) as e:
    raise UserError(f'{path} is not a readable MATLAB file ({e}). It is '
                    'damaged: get it again.') from e
  absent = [name for name in variables if name not in mat]
  if absent:
    raise UserError(f'{path} lacks the variable(s) {absent}: it is not the '
                    'file of that name from the Stanford Cars devkit.')
  return mat


def _records(path: epath.Path, annotations: np.ndarray,
             fields: Sequence[str]) -> np.ndarray:
  """The struct array `annotations` of `path`, checked for `fields`."""
  absent = [name for name in (*fields, *_BOX_FIELDS)
            if name not in (annotations.dtype.names or ())]
  if absent:
    hint = (f' It is probably cars_test_annos.mat, which has no labels: '
            f'use {_TEST_LABELS}.' if 'class' in absent else '')
    raise UserError(f'{path}: the annotations lack the field(s) {absent}.'
                    f'{hint}')
  return annotations.ravel()


def _annotation(record: np.void, path: epath.Path,
                image_id: str) -> builder_utils.Annotation:
  """One annotation record; boxes are 1-based inclusive pixel coordinates."""
  x1, y1, x2, y2 = (float(_item(record[field])) for field in _BOX_FIELDS)
  return builder_utils.Annotation(path=path, id=image_id,
                                  label=int(_item(record['class'])) - 1,
                                  box=(x1 - 1, y1 - 1, x2, y2))


def _item(value: np.ndarray):
  """The scalar in one of loadmat's 1x1 (or 1-element) arrays."""
  return np.asarray(value).item()


def _strings(cell: np.ndarray) -> list[str]:
  """A MATLAB cell array of strings as a list."""
  return [_item(value) for value in cell.ravel()]
