"""Tests of the synthetic dataset and the input pipeline, on tiny datasets."""
import pytest

# TensorFlow (Datasets) only feeds the input pipeline: the GPU machines lack it.
tfds = pytest.importorskip('tensorflow_datasets')

import jax  # pylint: disable=g-import-not-at-top
import ml_collections
import numpy as np
import tensorflow as tf

from clan_jax.data import input_pipeline
from clan_jax.data import synthetic
from clan_jax.experiments import shared_errors
from configs import default

# 13 classes with one test image each: labels identify the test examples.
TINY = dict(num_classes=13, train_per_class=2, test_per_class=1, image_size=32,
            seed=0)


def _config(data_dir: str) -> ml_collections.ConfigDict:
  config = default.get_config()
  config.data.data_dir = data_dir
  config.data.synthetic.update(TINY)
  config.data.resize_size = 32
  config.data.image_size = 24
  config.data.batch_size = 4
  config.data.eval_batch_size = 4
  return config


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp('tensorflow_datasets'))


@pytest.fixture(scope='module')
def builder(data_dir):
  return input_pipeline.get_dataset_builder(_config(data_dir))


@pytest.fixture
def config(data_dir, builder) -> ml_collections.ConfigDict:
  del builder  # Only makes sure the dataset is prepared.
  return _config(data_dir)


def _encoded_examples(builder, split: str) -> dict[str, tuple[bytes, int]]:
  """{id: (PNG bytes, label)} of every example of `split`."""
  ds = builder.as_dataset(split=split,
                          decoders={'image': tfds.decode.SkipDecoding()})
  return {ex['id'].decode(): (ex['image'], int(ex['label']))
          for ex in tfds.as_numpy(ds)}


def _take(ds, count: int) -> list[dict[str, np.ndarray]]:
  iterator = input_pipeline.as_numpy(ds)
  return [next(iterator) for _ in range(count)]


def _stack(batches: list[dict[str, np.ndarray]], key: str) -> np.ndarray:
  return np.stack([batch[key] for batch in batches])


def test_synthetic_dataset_is_deterministic(tmp_path):
  sizes = dict(num_classes=3, train_per_class=2, test_per_class=1,
               image_size=32)
  builders = [
      synthetic.synthetic_builder(str(tmp_path / 'a'), **sizes, seed=0),
      synthetic.synthetic_builder(str(tmp_path / 'b'), **sizes, seed=0),
      # Shares a data_dir with the first: must not collide with it.
      synthetic.synthetic_builder(str(tmp_path / 'a'), **sizes, seed=1),
  ]
  for builder in builders:
    builder.download_and_prepare()
  first, same_seed, other_seed = (_encoded_examples(b, 'train')
                                  for b in builders)
  assert first == same_seed
  assert first.keys() == other_seed.keys()
  assert all(first[i][0] != other_seed[i][0] for i in first)


def test_synthetic_dataset_contents(builder):
  assert builder.name == synthetic.NAME == 'clan_synthetic'
  assert input_pipeline.num_examples(builder, 'train') == 26
  assert input_pipeline.num_examples(builder, 'test') == 13
  assert input_pipeline.num_classes(builder) == 13
  label = builder.info.features['label']
  assert label.names[:2] == ['species_00', 'species_01']
  for split, per_class in (('train', 2), ('test', 1)):
    examples = _encoded_examples(builder, split)
    labels = [label for _, label in examples.values()]
    assert sorted(labels) == sorted(list(range(13)) * per_class)
    assert all(i.startswith(split) for i in examples)
  image = next(iter(tfds.as_numpy(builder.as_dataset(split='test'))))['image']
  assert image.shape == (32, 32, 3) and image.dtype == np.uint8


def test_synthetic_sizes_are_checked(tmp_path):
  sizes = dict(train_per_class=1, test_per_class=1, image_size=72, seed=0)
  with pytest.raises(ValueError, match='num_classes=33'):
    synthetic.synthetic_builder(str(tmp_path), num_classes=33, **sizes)
  assert synthetic.MAX_CLASSES >= 32
  assert len({synthetic.species(label)
              for label in range(synthetic.MAX_CLASSES)}) == 32


def test_source_task_is_coarse_disjoint_and_drawn_apart(tmp_path):
  rng = np.random.default_rng(0)
  demo = {synthetic.species(label) for label in range(synthetic.MAX_CLASSES)}
  source = [synthetic.source_details(label, rng) for label in range(synthetic.SOURCE_CLASSES)
            for _ in range(20)]
  assert not {s.wing for s in demo} & {s.wing for s in source}
  # The label fixes wing, eye and beak; the tail varies within a class.
  assert len({(s.wing, s.eye, s.beak) for s in source}) == synthetic.SOURCE_CLASSES == 16
  assert len({(s.wing, s.eye, s.beak) for s in source[:20]}) == 1
  assert {s.tail for s in source[:20]} == {'plain', 'barred'}
  sizes = dict(num_classes=2, train_per_class=2, test_per_class=1, image_size=32, seed=0)
  builders = [synthetic.synthetic_builder(str(tmp_path), **sizes, source=flag)
              for flag in (False, True)]
  for builder in builders:
    builder.download_and_prepare()
  assert builders[1].builder_config.name.endswith('_source')
  demo_images, source_images = (_encoded_examples(b, 'train') for b in builders)
  # Other birds, not the demo's recoloured: no image shares a row with its twin.
  for key in demo_images:
    a, b = (tf.io.decode_png(images[key][0]).numpy() for images in (demo_images, source_images))
    assert not (a == b).all(axis=(1, 2)).any()
  with pytest.raises(ValueError, match=r'num_classes=17 must be in \[2, 16\]'):
    synthetic.synthetic_builder(str(tmp_path), **{**sizes, 'num_classes': 17}, source=True)


def test_train_batches(config, builder):
  # 10 batches of 4 run through the 26 examples more than once.
  batches = _take(input_pipeline.create_train_dataset(config, builder), 10)
  for batch in batches:
    assert batch.keys() == {'image', 'label'}
    assert batch['image'].shape == (4, 24, 24, 3)
    assert batch['image'].dtype == np.float32
    assert batch['label'].shape == (4,) and batch['label'].dtype == np.int32
  images, labels = _stack(batches, 'image'), _stack(batches, 'label')
  mean = np.array(input_pipeline.MEAN_RGB)
  std = np.array(input_pipeline.STDDEV_RGB)
  assert np.all(images >= -mean / std - 1e-5)
  assert np.all(images <= (255 - mean) / std + 1e-5)
  assert images.min() < -1 and images.max() > 1  # normalised, not 0..1
  assert labels.min() >= 0 and labels.max() < 13

  again = _take(input_pipeline.create_train_dataset(config, builder), 10)
  np.testing.assert_array_equal(_stack(again, 'image'), images)
  np.testing.assert_array_equal(_stack(again, 'label'), labels)
  config.seed = 1
  other = _take(input_pipeline.create_train_dataset(config, builder), 10)
  assert not np.array_equal(_stack(other, 'image'), images)


def test_each_epoch_is_a_permutation_of_the_split(config, builder):
  # Positions 0..25 are epoch 0, 26..51 epoch 1: 13 batches of 4 hold both.
  labels = _stack(_take(input_pipeline.create_train_dataset(config, builder), 13),
                  'label').ravel()
  for epoch in labels[:26], labels[26:]:
    assert sorted(epoch) == sorted(list(range(13)) * 2)
  assert not np.array_equal(labels[:26], labels[26:])


def test_resumed_stream_is_the_uninterrupted_one(config, builder):
  full = _take(input_pipeline.create_train_dataset(config, builder), 9)
  resumed = _take(input_pipeline.create_train_dataset(config, builder, start_step=6), 3)
  for key in ('image', 'label'):
    np.testing.assert_array_equal(_stack(resumed, key), _stack(full[6:], key))


def test_global_batch_does_not_depend_on_the_process_count(config, builder, monkeypatch):
  single = _take(input_pipeline.create_train_dataset(config, builder, start_step=5), 2)
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  shares = []
  for index in range(2):
    monkeypatch.setattr(jax, 'process_index', lambda index=index: index)
    shares.append(_take(input_pipeline.create_train_dataset(config, builder, start_step=5), 2))
  for step in range(2):
    for key in ('image', 'label'):
      assert shares[0][step][key].shape[0] == 2
      np.testing.assert_array_equal(
          np.concatenate([shares[0][step][key], shares[1][step][key]]), single[step][key])


def test_cached_and_uncached_streams_are_identical(config, builder):
  cached = _take(input_pipeline.create_train_dataset(config, builder), 8)
  config.data.cache = False
  uncached = _take(input_pipeline.create_train_dataset(config, builder), 8)
  for key in ('image', 'label'):
    np.testing.assert_array_equal(_stack(uncached, key), _stack(cached, key))


def _eval_labels(config, builder) -> tuple[list[int], int, int]:
  """(labels of the real examples, batches seen, batches announced)."""
  ds, num_batches = input_pipeline.create_eval_dataset(config, builder, 'test')
  batch_size = config.data.eval_batch_size // jax.process_count()
  labels, seen = [], 0
  for batch in input_pipeline.as_numpy(ds):
    assert batch['image'].shape == (batch_size, 24, 24, 3)
    assert batch['mask'].dtype == np.float32
    labels += batch['label'][batch['mask'] == 1].tolist()
    seen += 1
  return labels, seen, num_batches


def test_eval_yields_every_example_once(config, builder):
  ds, num_batches = input_pipeline.create_eval_dataset(config, builder, 'test')
  batches = list(input_pipeline.as_numpy(ds))
  assert num_batches == len(batches) == 4  # ceil(13 / 4), the last one padded
  masks = np.concatenate([b['mask'] for b in batches])
  assert masks.sum() == 13 and set(np.unique(masks)) == {0.0, 1.0}
  labels, _, _ = _eval_labels(config, builder)
  assert sorted(labels) == list(range(13))  # one test image per class


def test_eval_splits_over_processes(config, builder, monkeypatch):
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  results = []
  for index in range(2):
    monkeypatch.setattr(jax, 'process_index', lambda index=index: index)
    results.append(_eval_labels(config, builder))
  (labels_0, seen_0, num_0), (labels_1, seen_1, num_1) = results
  # 7 and 6 examples in batches of 2: both processes yield ceil(7 / 2) = 4.
  assert seen_0 == num_0 == seen_1 == num_1 == 4
  assert (len(labels_0), len(labels_1)) == (7, 6)
  assert sorted(labels_0 + labels_1) == list(range(13))


def test_batch_size_must_divide_over_processes(config, builder, monkeypatch):
  monkeypatch.setattr(jax, 'process_count', lambda: 3)
  with pytest.raises(ValueError, match='config.data.batch_size=4'):
    input_pipeline.create_train_dataset(config, builder)
  with pytest.raises(ValueError, match='config.data.eval_batch_size=4'):
    input_pipeline.create_eval_dataset(config, builder, 'test')


def test_crop_larger_than_resize_is_an_error(config, builder):
  config.data.image_size = 40
  with pytest.raises(ValueError, match='config.data.resize_size'):
    input_pipeline.create_train_dataset(config, builder)


def test_unprepared_dataset_is_an_error(tmp_path):
  config = _config(str(tmp_path))
  config.data.dataset = 'mnist'
  with pytest.raises(FileNotFoundError, match="'mnist'.* not prepared"):
    input_pipeline.get_dataset_builder(config)
  config.data.dataset = 'no_such_dataset'
  with pytest.raises(ValueError, match='config.data.dataset'):
    input_pipeline.get_dataset_builder(config)


@pytest.mark.parametrize('shape, encode, expected', [
    ((50, 30, 1), tf.io.encode_png, (40, 24, 3)),  # grayscale, portrait
    ((20, 40, 4), tf.io.encode_png, (24, 48, 3)),  # RGBA, landscape
    ((24, 24, 3), tf.io.encode_jpeg, (24, 24, 3)),
])
def test_decode_and_resize_any_image(shape, encode, expected):
  pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
  image = input_pipeline.decode_and_resize(encode(pixels), 24)
  assert image.shape == expected and image.dtype == tf.uint8


def test_validation_split_is_the_fixed_end_of_the_train_split(config, builder):
  assert input_pipeline.split_names(config) == ('train', None)
  config.data.validation_percent = 25
  train, validation = input_pipeline.split_names(config)
  assert (train, validation) == ('train[:75%]', 'train[75%:]')
  train_ids = set(_encoded_examples(builder, train))
  validation_ids = set(_encoded_examples(builder, validation))
  assert not train_ids & validation_ids
  assert train_ids | validation_ids == set(_encoded_examples(builder, 'train'))
  assert len(validation_ids) == input_pipeline.num_examples(builder, validation) > 0


@pytest.mark.parametrize('percent', [100, -1])
def test_bad_validation_percent_is_named(config, percent):
  config.data.validation_percent = percent
  with pytest.raises(ValueError, match='config.data.validation_percent'):
    input_pipeline.split_names(config)


def test_crop_to_box_keeps_the_pixels_the_box_touches():
  image = tf.reshape(tf.range(10 * 20 * 3, dtype=tf.int32), (10, 20, 3))
  crop = input_pipeline.crop_to_box(image, tf.constant([0.2, 0.5, 0.55, 0.61]))
  # Rows 2..5 (0.55 * 10 = 5.5 touches row 5), columns 10..12 (12.2 touches 12).
  np.testing.assert_array_equal(crop, image[2:6, 10:13])
  empty_box = input_pipeline.crop_to_box(image, tf.constant([0.5, 0.5, 0.5, 0.5]))
  assert empty_box.shape == (1, 1, 3)


def test_crop_to_bbox_needs_boxes(config):
  config.data.crop_to_bbox = True
  with pytest.raises(ValueError, match='config.data.crop_to_bbox'):
    input_pipeline.get_dataset_builder(config)


def test_the_harder_knobs_name_their_dataset_and_can_hide_a_detail(tmp_path):
  sizes = dict(num_classes=32, train_per_class=30, test_per_class=20, image_size=108, seed=0)
  plain = synthetic.SyntheticConfig(**sizes)
  harder = synthetic.SyntheticConfig(**sizes, min_scale=0.1, occluders=3)
  # Unset, the knobs leave the name (and every data directory prepared before them) as it was.
  assert plain.name == 'c32_train30_test20_px108_seed0'
  assert harder.name == 'c32_train30_test20_px108_seed0_scale0.1_occluders3'
  for knobs, message in (({'min_scale': 0}, 'min_scale=0'), ({'occluders': -1}, 'occluders=-1')):
    with pytest.raises(ValueError, match=message):
      synthetic.synthetic_builder(str(tmp_path), **sizes, **knobs)
  # A leaf in front of test image 53 of the harder task hides the detail that
  # tells its species from another (found by scanning the first 160 images:
  # 53 and 79), so the two species look alike in the demo's crop; without the
  # knobs, or in image 0, every species looks different.
  config = default.get_config()
  ids = [synthetic.example_id('test', i) for i in (0, 53)]
  for dataset, alike_want in ((plain, [1, 1]), (harder, [1, 2])):
    _, alike = shared_errors.species_evidence(config, dataset, ids)
    assert list(alike) == alike_want
