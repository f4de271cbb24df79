"""Tests of the CUB-200-2011, Stanford Cars and FGVC-Aircraft builders.

Each dataset is built from a tiny copy in the official formats
(`tests/fake_datasets.py`).
"""
import collections
import dataclasses
import io
import pathlib
import re
import tempfile

import pytest

# TensorFlow (Datasets) only feeds the input pipeline: the GPU machines lack it.
tfds = pytest.importorskip('tensorflow_datasets')

import numpy as np  # pylint: disable=g-import-not-at-top
import PIL.Image

from clan_jax.data import builder_utils
from clan_jax.data import cub as cub_builder
from clan_jax.data import fgvc_aircraft
from clan_jax.data import input_pipeline
from clan_jax.data import prepare
from clan_jax.data import stanford_cars
from configs import test as test_config
from tests import fake_datasets

# ---------------------------------------------------------------- fixtures

@dataclasses.dataclass
class Prepared:
  builder: tfds.core.DatasetBuilder
  items: list[fake_datasets.Item]
  data_dir: str


def _prepare(tmp_path_factory, dataset: str, write, config=None) -> Prepared:
  manual_dir = tmp_path_factory.mktemp('manual')
  items = write(manual_dir)
  data_dir = str(tmp_path_factory.mktemp('tensorflow_datasets'))
  builder = prepare.prepare(dataset, str(manual_dir), data_dir, config)
  return Prepared(builder, items, data_dir)


@pytest.fixture(scope='module', params=['archive', 'folder'])
def cub(request, tmp_path_factory) -> Prepared:
  return _prepare(tmp_path_factory, 'cub', lambda d: fake_datasets.write_cub(
      d, archive=request.param == 'archive'))


@pytest.fixture(scope='module')
def aircraft(tmp_path_factory) -> Prepared:
  return _prepare(tmp_path_factory, 'aircraft',
                  lambda d: fake_datasets.write_aircraft(d, archive=True))


@pytest.fixture(scope='module')
def cars_copies(tmp_path_factory):
  """Prepares Stanford Cars from a tiny copy in a layout, once per layout."""
  prepared = {}

  def get(layout: str) -> Prepared:
    if layout not in prepared:
      prepared[layout] = _prepare(tmp_path_factory, 'cars',
                                  lambda d: fake_datasets.write_cars(d, layout))
    return prepared[layout]
  return get


@pytest.fixture(params=['devkit_archives', 'kaggle', 'all_in_one'])
def cars(request, cars_copies) -> Prepared:
  return cars_copies(request.param)


def _examples(builder, split: str) -> dict[str, dict]:
  """{id: example} of `split`, images left encoded."""
  ds = builder.as_dataset(split=split,
                          decoders={'image': tfds.decode.SkipDecoding()})
  return {ex['id'].decode(): ex for ex in tfds.as_numpy(ds)}


def _expected_bbox(box, width: int, height: int) -> list[float]:
  xmin, ymin, xmax, ymax = box
  return list(np.clip([ymin / height, xmin / width, ymax / height,
                       xmax / width], 0, 1))


def _check(prepared: Prepared, class_names, *, banner: int = 0,
           cropped: bool = False) -> None:
  """Every example against the item it was written from.

  Args:
    prepared: the dataset and its items.
    class_names: the expected names of the labels.
    banner: rows at the bottom of the source images that are white.
    cropped: whether those rows must be gone.
  """
  builder = prepared.builder
  assert builder.info.features['label'].names == list(class_names)
  splits = sorted({split for item in prepared.items for split in item.splits})
  assert sorted(builder.info.splits) == splits
  for split in splits:
    items = {item.id: item for item in prepared.items if split in item.splits}
    examples = _examples(builder, split)
    assert examples.keys() == items.keys(), split
    for item_id, example in examples.items():
      item = items[item_id]
      assert example['label'] == item.label, item_id
      # Whatever the source file, a 3-channel RGB JPEG of the same size.
      assert example['image'][:2] == b'\xff\xd8', item_id
      image = PIL.Image.open(io.BytesIO(example['image']))
      assert (image.format, image.mode) == ('JPEG', 'RGB'), item_id
      height = item.height - banner if cropped else item.height
      assert image.size == (item.width, height), item_id
      pixels = np.asarray(image).astype(int)
      picture = pixels[:item.height - banner]
      np.testing.assert_allclose(picture.mean(axis=(0, 1)), item.colour,
                                 atol=6, err_msg=item_id)
      if banner and not cropped:
        assert pixels[-banner // 2:].min() > 240, item_id
      np.testing.assert_allclose(example['bbox'],
                                 _expected_bbox(item.box, item.width, height),
                                 atol=1e-6, err_msg=item_id)


# ---------------------------------------------------------------- tests

def test_names_are_free_in_tfds():
  for name in ('cub_200_2011', 'stanford_cars', 'fgvc_aircraft'):
    assert tfds.builder_cls(name).__module__.startswith('clan_jax.data.')


def test_cub(cub):
  _check(cub, fake_datasets.CUB_CLASSES)
  _check_eval_pipeline(cub)
  # The first image's box extends past the image: clipped to its edges.
  example = _examples(cub.builder, 'train')[cub.items[0].id]
  assert example['bbox'][2:].tolist() == [1.0, 1.0]


def test_aircraft_banner_cropped(aircraft):
  assert aircraft.builder.builder_config.crop_banner
  _check(aircraft, fake_datasets.VARIANTS, banner=fgvc_aircraft.BANNER_HEIGHT, cropped=True)
  _check_eval_pipeline(aircraft)
  # The box whose bottom lay in the banner ends at the cropped image's bottom.
  example = _examples(aircraft.builder, 'val')[aircraft.items[1].id]
  assert example['bbox'][2] == 1.0


def test_aircraft_with_banner_from_folder(tmp_path_factory):
  prepared = _prepare(tmp_path_factory, 'aircraft',
                      lambda d: fake_datasets.write_aircraft(d, archive=False),
                      config='variant_with_banner')
  _check(prepared, fake_datasets.VARIANTS, banner=fgvc_aircraft.BANNER_HEIGHT)


def test_cars(cars):
  _check(cars, fake_datasets.CAR_CLASSES)
  _check_eval_pipeline(cars)


def test_cars_kaggle_copy_reads_as_the_official_files(cars_copies):
  official = cars_copies('devkit_archives').builder
  kaggle = cars_copies('kaggle').builder
  assert (kaggle.info.features['label'].names ==
          official.info.features['label'].names)
  assert sorted(kaggle.info.splits) == sorted(official.info.splits)
  for split in official.info.splits:
    assert (kaggle.info.splits[split].num_examples ==
            official.info.splits[split].num_examples)
    expected = _examples(official, split)
    examples = _examples(kaggle, split)
    assert examples.keys() == expected.keys()
    for image_id, example in examples.items():
      assert example.keys() == expected[image_id].keys()
      for key, value in example.items():
        np.testing.assert_array_equal(value, expected[image_id][key],
                                      err_msg=f'{image_id}: {key}')


def _check_eval_pipeline(prepared: Prepared) -> None:
  """The test split through the training code's evaluation pipeline."""
  config = test_config.get_config()
  config.data.dataset = prepared.builder.name
  config.data.data_dir = prepared.data_dir
  builder = input_pipeline.get_dataset_builder(config)
  ds, num_batches = input_pipeline.create_eval_dataset(config, builder, 'test')
  batches = list(input_pipeline.as_numpy(ds))
  assert len(batches) == num_batches
  images, labels, masks = (np.concatenate([batch[key] for batch in batches])
                           for key in ('image', 'label', 'mask'))
  assert images.shape[1:] == (config.data.image_size, config.data.image_size, 3)
  assert sorted(labels[masks == 1]) == sorted(
      item.label for item in prepared.items if 'test' in item.splits)


def test_summary_reports_mismatches(cub):
  text = prepare.summary(cub.builder)
  assert 'train: 6' in text and 'test: 3' in text
  assert 'train: 6, expected 5,994' in text
  assert 'classes: 3, expected 200' in text
  assert builder_utils.count_mismatches(
      {'classes': 200, 'train': 5_994, 'test': 5_794},
      cub.builder.OFFICIAL_COUNTS) == []


def _builder(data_dir, dataset: str = 'cub'):
  return prepare.BUILDERS[dataset](data_dir=str(data_dir))


def _prepare_from(builder, manual_dir) -> None:
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual_dir)))


def test_missing_manual_dir(tmp_path):
  builder = _builder(tmp_path / 'data')
  with pytest.raises(FileNotFoundError, match='(?s)nowhere.*CUB_200_2011.tgz'):
    _prepare_from(builder, tmp_path / 'nowhere')
  assert not builder.is_prepared()


def test_manual_dir_without_the_dataset(tmp_path):
  (tmp_path / 'manual').mkdir()
  (tmp_path / 'manual' / 'notes.txt').write_text('not CUB')
  with pytest.raises(FileNotFoundError, match='Neither .*CUB_200_2011.tgz'):
    _prepare_from(_builder(tmp_path / 'data'), tmp_path / 'manual')


def test_missing_metadata_file(tmp_path):
  fake_datasets.write_cub(tmp_path / 'manual', archive=False)
  (tmp_path / 'manual' / 'CUB_200_2011' / 'bounding_boxes.txt').unlink()
  builder = _builder(tmp_path / 'data')
  with pytest.raises(FileNotFoundError, match='bounding_boxes.txt is missing'):
    _prepare_from(builder, tmp_path / 'manual')
  assert not builder.is_prepared()


@pytest.mark.parametrize('damage', ['missing', 'undecodable'])
def test_bad_image_fails_cleanly_and_a_fixed_retry_succeeds(tmp_path, damage):
  items = fake_datasets.write_aircraft(tmp_path / 'manual', archive=False)
  # The last image of a split: a half-written split precedes the failure.
  image = (tmp_path / 'manual' / 'fgvc-aircraft-2013b' / 'data' / 'images' /
           f'{items[-1].id}.jpg')
  good = image.read_bytes()
  if damage == 'missing':
    image.unlink()
    error, message = FileNotFoundError, 'is missing'
  else:
    image.write_bytes(good[:len(good) // 2])  # a truncated download
    error, message = ValueError, 'cannot be decoded'
  builder = _builder(tmp_path / 'data', 'aircraft')
  with pytest.raises(error, match=f'{image.name}.*images_variant_test.txt'
                     f'.*{message}'):
    _prepare_from(builder, tmp_path / 'manual')
  assert not builder.is_prepared()
  assert not _builder(tmp_path / 'data', 'aircraft').is_prepared()

  image.write_bytes(good)
  builder = _builder(tmp_path / 'data', 'aircraft')
  _prepare_from(builder, tmp_path / 'manual')
  assert builder.is_prepared()
  assert builder.info.splits['test'].num_examples == 4


def test_cars_names_the_missing_file_and_the_paths_tried(tmp_path):
  manual_dir = tmp_path / 'manual'
  fake_datasets.write_cars(manual_dir, 'kaggle')
  (manual_dir / fake_datasets.KAGGLE_TEST_LABELS).unlink()
  builder = _builder(tmp_path / 'data', 'cars')
  with pytest.raises(FileNotFoundError) as error:
    _prepare_from(builder, manual_dir)
  assert str(error.value) == (
      f'Stanford Cars: {manual_dir} has no cars_test_annos_withlabels.mat '
      "(the test labels; the devkit's cars_test_annos.mat has none); tried "
      'cars_test_annos_withlabels.mat, cars_test_annos_withlabels (1).mat, '
      'devkit/cars_test_annos_withlabels.mat, '
      'car_devkit/devkit/cars_test_annos_withlabels.mat.')
  assert not builder.is_prepared()


def test_cars_names_the_file_missing_from_the_nearest_layout(tmp_path):
  # All-in-one without its images: the error is about them, not about the
  # devkit files, none of which are there.
  manual_dir = tmp_path / 'manual'
  items = fake_datasets.write_cars(manual_dir, 'all_in_one')
  for item in items:
    (manual_dir / item.id).unlink()
  (manual_dir / 'car_ims').rmdir()
  with pytest.raises(FileNotFoundError) as error:
    _prepare_from(_builder(tmp_path / 'data', 'cars'), manual_dir)
  assert str(error.value) == (
      f'Stanford Cars: {manual_dir} has no car_ims (the images of '
      'cars_annos.mat); tried car_ims, car_ims.tgz.')


@pytest.mark.parametrize('test_labels', [fake_datasets.KAGGLE_TEST_LABELS,
                                         'cars_test_annos_withlabels.mat'])
def test_cars_test_annotations_without_labels(tmp_path, test_labels):
  manual_dir = tmp_path / 'manual'
  fake_datasets.write_cars(manual_dir, 'kaggle')
  # The devkit's unlabelled file under a name of the labelled one: Kaggle's
  # copy has it with or without ' (1)'. The error shows which file was read.
  (manual_dir / fake_datasets.KAGGLE_TEST_LABELS).unlink()
  (manual_dir / 'car_devkit' / 'devkit' / 'cars_test_annos.mat').rename(
      manual_dir / test_labels)
  with pytest.raises(ValueError, match=re.escape(
      f'{manual_dir / test_labels}: the annotations lack the field(s) '
      "['class']")):
    _prepare_from(_builder(tmp_path / 'data', 'cars'), manual_dir)


# ------------------------------------------- TFDS's own builder test case
# It prepares each builder from the tiny official-format copy (as its manual
# directory) and checks the split sizes, that each split's examples are
# distinct from the others', and that examples can be read back.


def _split_sizes(items: list[fake_datasets.Item]) -> dict[str, int]:
  return dict(collections.Counter(split for item in items for split in item.splits))


class _OfficialFormat:
  """Mixin: writes the dataset with `WRITE` into a fresh EXAMPLE_DIR, once per class.

  A mixin, not a TestCase, so that pytest does not collect it on its own.
  """

  SKIP_CHECKSUMS = True  # nothing is ever downloaded
  WRITE = None

  @classmethod
  def setUpClass(cls):
    cls.EXAMPLE_DIR = tempfile.mkdtemp()
    cls.SPLITS = _split_sizes(cls.WRITE(pathlib.Path(cls.EXAMPLE_DIR)))
    super().setUpClass()


class CubBuilderTest(_OfficialFormat, tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = cub_builder.Cub2002011
  WRITE = staticmethod(lambda d: fake_datasets.write_cub(d, archive=False))


class AircraftBuilderTest(_OfficialFormat, tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = fgvc_aircraft.FgvcAircraft
  WRITE = staticmethod(lambda d: fake_datasets.write_aircraft(d, archive=False))
  OVERLAPPING_SPLITS = ['trainval', 'train', 'val']


class CarsBuilderTest(_OfficialFormat, tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = stanford_cars.StanfordCars
  WRITE = staticmethod(lambda d: fake_datasets.write_cars(d, 'kaggle'))
