"""Stanford Cars as a TFDS dataset, from the files the user already has.

196 car models (make, model, year), 8,144 training and 8,041 test images, one
bounding box each. TFDS's own `cars196` cannot download any more (its address
is dead), and the copies that circulate come in several layouts. This builder
reads the manual directory in whichever of these it finds:

  devkit: the official files, extracted or not, with the test labels that
    were published after the challenge:
      cars_train/ (or cars_train.tgz), cars_test/ (or cars_test.tgz),
      devkit/ (or car_devkit.tgz) with cars_meta.mat and cars_train_annos.mat,
      cars_test_annos_withlabels.mat (here or in devkit/).
    Kaggle's copy nests the folders (cars_train/cars_train/, ...,
    car_devkit/devkit/): that works too.
  all-in-one: cars_annos.mat (every image, with a `test` flag and the class
    names) and car_ims/ (or car_ims.tgz).

  python -m clan_jax.cli.prepare_data --dataset=cars --manual_dir=PATH
"""
from collections.abc import Sequence

from etils import epath
import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from clan_jax.data import builder_utils
from clan_jax.user_errors import MissingFileError, UserError

_TEST_LABELS = 'cars_test_annos_withlabels.mat'
_ALL_IN_ONE = 'cars_annos.mat'
_BOX_FIELDS = ('bbox_x1', 'bbox_y1', 'bbox_x2', 'bbox_y2')


class StanfordCars(tfds.core.GeneratorBasedBuilder):
  """Stanford Cars: 196 classes of cars, the official train/test split."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  OFFICIAL_COUNTS = {'classes': 196, 'train': 8_144, 'test': 8_041}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
The original site (ai.stanford.edu/~jkrause/cars) is offline; copies circulate
(e.g. on Kaggle). Put one of these layouts in the manual directory:

  devkit (the official files; each folder may also be its .tgz archive):
    MANUAL_DIR/cars_train/*.jpg        (or cars_train.tgz)
    MANUAL_DIR/cars_test/*.jpg         (or cars_test.tgz)
    MANUAL_DIR/devkit/cars_meta.mat, devkit/cars_train_annos.mat
                                       (or car_devkit.tgz)
    MANUAL_DIR/cars_test_annos_withlabels.mat   (the test labels)
  Kaggle's nested copy of the same files is read as it is:
    cars_train/cars_train/, cars_test/cars_test/, car_devkit/devkit/
  all-in-one:
    MANUAL_DIR/cars_annos.mat and MANUAL_DIR/car_ims/*.jpg (or car_ims.tgz)
"""

  def _info(self) -> tfds.core.DatasetInfo:
    return builder_utils.dataset_info(
        self, __doc__, 'https://ai.stanford.edu/~jkrause/cars/car_dataset.html')

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = builder_utils.manual_dir(dl_manager)
    if (manual_dir / _ALL_IN_ONE).exists():
      image_root = builder_utils.find(
          dl_manager, manual_dir, ['.'], marker='car_ims',
          archives=['car_ims.tgz'])
      if image_root is not None:
        splits, names_file = self._all_in_one(manual_dir / _ALL_IN_ONE,
                                              image_root)
        return self._generators(splits, names_file)
    splits, names_file = self._devkit(dl_manager, manual_dir)
    return self._generators(splits, names_file)

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

  def _all_in_one(self, annos_file: epath.Path, image_root: epath.Path):
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
      splits[split].append(_annotation(record, image_root / relative_path,
                                       relative_path))
    return ({split: (items, annos_file) for split, items in splits.items()},
            annos_file)

  def _devkit(self, dl_manager: tfds.download.DownloadManager,
              manual_dir: epath.Path):
    """The official devkit files, in any of the layouts that mirrors use."""
    def find(candidates: Sequence[str], **kwargs) -> epath.Path | None:
      return builder_utils.find(dl_manager, manual_dir, candidates, **kwargs)

    # Kaggle nests each folder in one of the same name: try that first.
    train_dir = find(['cars_train/cars_train', 'cars_train'],
                     archives=['cars_train.tgz'])
    test_dir = find(['cars_test/cars_test', 'cars_test'],
                    archives=['cars_test.tgz'])
    devkit = find(['devkit', 'car_devkit/devkit'], marker='cars_meta.mat',
                  archives=['car_devkit.tgz'])
    test_labels = find([_TEST_LABELS, f'devkit/{_TEST_LABELS}',
                        f'car_devkit/devkit/{_TEST_LABELS}'])
    train_annos = None if devkit is None else devkit / 'cars_train_annos.mat'
    wanted = {
        'cars_train/ (or cars_train.tgz)': train_dir,
        'cars_test/ (or cars_test.tgz)': test_dir,
        'devkit/cars_meta.mat (or car_devkit.tgz)': devkit,
        'devkit/cars_train_annos.mat': (
            train_annos if train_annos and train_annos.exists() else None),
        f'{_TEST_LABELS} (the test labels; devkit/cars_test_annos.mat has '
        'none)': test_labels,
    }
    missing = [name for name, path in wanted.items() if path is None]
    if missing:
      all_in_one = (f'{_ALL_IN_ONE} is there but car_ims/ (or car_ims.tgz) is '
                    'not' if (manual_dir / _ALL_IN_ONE).exists() else
                    f'{_ALL_IN_ONE} and car_ims/ are not there either')
      raise MissingFileError(
          f'Stanford Cars is incomplete in {manual_dir}: the devkit layout '
          f'lacks {", ".join(missing)}; {all_in_one}.\n'
          f'{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')

    meta_file = devkit / 'cars_meta.mat'
    builder_utils.set_class_names(
        self, _strings(_load_mat(meta_file, ['class_names'])['class_names']),
        meta_file)
    splits = {}
    for split, annos_file, image_dir in (('train', train_annos, train_dir),
                                         ('test', test_labels, test_dir)):
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
  if not path.exists():
    raise MissingFileError(
        f'Metadata file {path} is missing. '
        f'{StanfordCars.MANUAL_DOWNLOAD_INSTRUCTIONS}')
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
