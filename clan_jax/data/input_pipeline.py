"""Input pipeline: TFDS examples -> per-process batches of numpy arrays.

Training: the global batch of step k is a pure function of (config.seed, k)
and the dataset, whatever the number of processes (`create_train_dataset`);
each process yields its rows of it. Evaluation: every process reads its own
disjoint slice of the split (`tfds.even_splits`). Either way a process yields
batches of `global batch size // jax.process_count()` examples, and the
training loop assembles the global batch across processes.

Images of any size, aspect ratio and channel count are decoded to RGB, resized
so that their shorter side is `config.data.resize_size`, then cropped to
`config.data.image_size`: randomly (plus a random horizontal flip) for training,
centrally for evaluation. Pixels are normalised with the ImageNet statistics.
"""
from collections.abc import Callable, Iterator
import math
from typing import Any

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from clan_jax.data import synthetic
from clan_jax.user_errors import MissingFileError, UserError

# Tags that split config.seed into independent streams of the training input.
_ORDER_STREAM = 0  # the permutation of each epoch
_AUGMENT_STREAM = 1  # each position's random crop and flip

# ImageNet statistics on the 0..255 scale.
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def get_dataset_builder(
    config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """Returns the prepared builder of `config.data.dataset` in `config.data.data_dir`.

  The synthetic dataset is generated when missing; any other dataset must
  already be prepared, as nothing is ever downloaded at run time.

  Raises:
    ValueError: `config.data.dataset` is not a TFDS dataset with 'image' and
      'label' (ClassLabel) features.
    FileNotFoundError: `config.data.dataset` is not prepared in `config.data.data_dir`.
  """
  if config.data.dataset == synthetic.NAME:
    builder = synthetic.synthetic_builder(config.data.data_dir, **config.data.synthetic)
    if not builder.is_prepared():
      # Takes seconds. With several processes sharing a data_dir, process 0
      # alone should prepare it while the others wait at a barrier.
      builder.download_and_prepare()
  else:
    builder = _prepared_builder(config)
  _check_features(config, builder)
  return builder


def _prepared_builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  try:
    builder = tfds.builder(config.data.dataset, data_dir=config.data.data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise UserError(
        f'config.data.dataset={config.data.dataset!r} is not a known TFDS dataset.') from e
  if not builder.is_prepared():
    raise MissingFileError(
        f'Dataset {config.data.dataset!r} (config.data.dataset) is not prepared in '
        f'{builder.data_dir_root} (config.data.data_dir). Datasets are never '
        'downloaded at run time: prepare it once, with `python -m '
        'clan_jax.cli.prepare_data --dataset=cub|cars|aircraft --manual_dir=... '
        '--data_dir=...` for the paper\'s datasets (README, "Datasets") or '
        '`tfds build` for others, and point config.data.data_dir there.')
  return builder


def _check_features(config: ml_collections.ConfigDict,
                    builder: tfds.core.DatasetBuilder) -> None:
  features = builder.info.features
  # FeaturesDict supports `in` and [] but has no .get().
  if 'image' not in features or 'label' not in features or not isinstance(
      features['label'], tfds.features.ClassLabel):
    raise UserError(
        f'config.data.dataset={config.data.dataset!r} needs an "image" and a "label" '
        f'(ClassLabel) feature; its features are {list(features.keys())}.')
  if config.data.crop_to_bbox and 'bbox' not in features:
    raise UserError(f'config.data.crop_to_bbox is set, but {config.data.dataset!r} has no '
                    f"'bbox' feature; its features are {list(features.keys())}.")


def split_names(config: ml_collections.ConfigDict) -> tuple[str, str | None]:
  """(the split to train on, the held-out validation split or None).

  With config.data.validation_percent = p > 0, the last p% of config.data.train_split
  (in the dataset's stored order, which TFDS fixes when it prepares the
  dataset) is held out for validation: the same images on every run.
  """
  percent = config.data.validation_percent
  if not percent:
    return config.data.train_split, None
  if not 0 < percent < 100:
    raise UserError(f'config.data.validation_percent={percent} must be between 1 '
                    'and 99 (or 0 for no validation split).')
  if '[' in config.data.train_split:
    raise UserError(
        f'config.data.validation_percent needs a whole split in config.data.train_split, '
        f'not the slice {config.data.train_split!r}.')
  cut = 100 - percent
  return f'{config.data.train_split}[:{cut}%]', f'{config.data.train_split}[{cut}%:]'


def num_examples(builder: tfds.core.DatasetBuilder, split: str) -> int:
  """Examples in `split`, which may be a sub-split such as 'train[:90%]'."""
  return builder.info.splits[split].num_examples


def num_classes(builder: tfds.core.DatasetBuilder) -> int:
  return builder.info.features['label'].num_classes


def class_names(builder: tfds.core.DatasetBuilder) -> list[str]:
  return builder.info.features['label'].names


def create_train_dataset(config: ml_collections.ConfigDict,
                         builder: tfds.core.DatasetBuilder, *,
                         start_step: int = 0) -> tf.data.Dataset:
  """Infinite, shuffled, augmented training batches of this process, from `start_step` on.

  The order is index based, so that a resumed run reads what an uninterrupted
  one would. The training stream is the concatenation of epochs; epoch e is a
  permutation of the train split drawn from (config.seed, e). The global batch
  of train step k (0-based: the batch that takes state.step from k to k + 1)
  is positions [k B, (k + 1) B) of that stream, B = config.data.batch_size, and the
  random crop and flip of position p are drawn from (config.seed, p). So global
  batch k is a pure function of (config.seed, k) and the dataset, whatever the
  number of processes; process i of P yields its rows [i B / P, (i + 1) B / P).

  Args:
    config: the experiment config (seed, train_split, validation_percent,
      resize_size, image_size, batch_size, cache, crop_to_bbox).
    builder: a prepared builder (see `get_dataset_builder`).
    start_step: the first global batch to yield (a resumed state's step).

  Returns:
    Batches {'image': float32 [b, image_size, image_size, 3] (normalised),
    'label': int32 [b]} with b = config.data.batch_size // jax.process_count().
  """
  batch_size = _local_batch_size(config.data.batch_size, 'config.data.batch_size')
  check_crop_size(config)
  size, load = _random_access_examples(config, builder, split_names(config)[0])
  order_key = tf.constant([config.seed, _ORDER_STREAM], tf.int64)
  augment_key = tf.constant([config.seed, _AUGMENT_STREAM], tf.int64)
  first_row = jax.process_index() * batch_size

  def example(count: tf.Tensor) -> dict[str, tf.Tensor]:
    """The `count`-th example this process yields (int64 scalar)."""
    step = start_step + count // batch_size
    position = step * config.data.batch_size + first_row + count % batch_size
    epoch_key = tf.random.experimental.stateless_fold_in(order_key, position // size)
    index = tf.random.experimental.index_shuffle(position % size, epoch_key,
                                                 tf.constant(size - 1, tf.int64))
    image, label = load(index)
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(augment_key, position), 2))
    image = tf.image.stateless_random_crop(
        image, [config.data.image_size, config.data.image_size, 3], crop_seed)
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return {'image': _normalize(image), 'label': label}

  ds = tf.data.Dataset.counter()
  ds = _map(ds, example, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=True)
  return _deterministic(ds.prefetch(tf.data.AUTOTUNE))


def create_eval_dataset(config: ml_collections.ConfigDict,
                        builder: tfds.core.DatasetBuilder,
                        split: str) -> tuple[tf.data.Dataset, int]:
  """Evaluation batches of this process: its slice of `split`, each example once.

  The last batches are padded with masked examples, so that all batches have
  the same shape and every process yields the same number of batches (which
  jitted multi-process evaluation needs).

  Args:
    config: the experiment config (resize_size, image_size, eval_batch_size,
      cache).
    builder: a prepared builder (see `get_dataset_builder`).
    split: a split or sub-split, e.g. 'test' or 'train[90%:]'.

  Returns:
    (dataset, number of batches). Batches are {'image': float32
    [b, image_size, image_size, 3] (normalised), 'label': int32 [b],
    'mask': float32 [b] (1 for real examples, 0 for padding)} with
    b = config.data.eval_batch_size // jax.process_count().
  """
  batch_size = _local_batch_size(config.data.eval_batch_size,
                                 'config.data.eval_batch_size')
  check_crop_size(config)
  splits = _process_splits(split)
  local_split = splits[jax.process_index()]
  largest = max(num_examples(builder, s) for s in splits)
  num_batches = math.ceil(largest / batch_size)

  def preprocess(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {'image': eval_crop(example['image'], config.data.image_size),
            'label': example['label'], 'mask': tf.constant(1.0)}

  ds = _decoded_examples(config, builder, local_split)
  ds = _map(ds, preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  # All zeros, so masked out.
  padding = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype),
                                  ds.element_spec)
  num_padding = num_batches * batch_size - num_examples(builder, local_split)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(num_padding))
  ds = ds.batch(batch_size, drop_remainder=True)  # a multiple of it by now
  return _deterministic(ds.prefetch(tf.data.AUTOTUNE)), num_batches


def as_numpy(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
  """Iterates over `ds` as dicts of numpy arrays."""
  return iter(tfds.as_numpy(ds))


def _local_batch_size(global_batch_size: int, field: str) -> int:
  count = jax.process_count()
  if global_batch_size % count:
    raise UserError(f'{field}={global_batch_size} must be divisible by the '
                    f'number of processes, {count}.')
  return global_batch_size // count


def check_crop_size(config: ml_collections.ConfigDict) -> None:
  if config.data.resize_size < config.data.image_size:
    raise UserError(
        f'config.data.resize_size={config.data.resize_size} must be at least '
        f'config.data.image_size={config.data.image_size}: images are cropped to '
        'image_size after their shorter side is resized to resize_size.')


def _process_splits(split: str) -> list[tfds.typing.SplitArg]:
  """The disjoint, near-equal slices of `split`, one per process."""
  return tfds.even_splits(split, n=jax.process_count())


def _read_split(builder: tfds.core.DatasetBuilder,
                split: tfds.typing.SplitArg) -> tf.data.Dataset:
  """The examples of `split` in their stored order, images still encoded."""
  # Our own caches come after decoding, so TFDS's (of encoded images) is off.
  return builder.as_dataset(split=split, shuffle_files=False,
                            decoders={'image': tfds.decode.SkipDecoding()},
                            read_config=tfds.ReadConfig(try_autocache=False))


def _decode(config: ml_collections.ConfigDict,
            example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """{'image': encoded, 'label', ['bbox']} -> {'image': uint8 [H, W, 3], 'label': int32 []}.

  min(H, W) == config.data.resize_size; with config.data.crop_to_bbox the image is first
  cropped to its object's bounding box.
  """
  image = decode_rgb(example['image'])
  if config.data.crop_to_bbox:
    image = crop_to_box(image, example['bbox'])
  return {'image': resize_shorter_side(image, config.data.resize_size),
          'label': tf.cast(example['label'], tf.int32)}


def _decoded_examples(config: ml_collections.ConfigDict,
                      builder: tfds.core.DatasetBuilder,
                      split: tfds.typing.SplitArg) -> tf.data.Dataset:
  """Decoded examples of `split` (see `_decode`), in a fixed order, cached if config.data.cache.

  Resizing (and cropping to the bounding box) is deterministic, so it happens
  before the cache, which then holds small uint8 images.
  """
  ds = _map(_read_split(builder, split), lambda ex: _decode(config, ex),
            num_parallel_calls=tf.data.AUTOTUNE)
  return ds.cache() if config.data.cache else ds


# Exact resume needs random access: training looks its examples up by index
# (`create_train_dataset`). The train split is therefore held in host memory,
# read once at start, one record per example: the encoded image, or with
# config.data.cache the decoded, resized one. We chose this over TFDS's
# array_record data sources (`tfds.data_sources`) because it works on every
# prepared dataset, TFDS's default tfrecord format included, without preparing
# it again, and keeps the tf.data decoding the evaluation uses. Its cost is the
# split's encoded size in the host memory of every process (about 1.1 GB for
# CUB, 2 GB for Stanford Cars, 2.7 GB for FGVC-Aircraft; config.data.cache holds the
# decoded images instead, as before). A dataset larger than host memory would
# need `tfds.data_sources` over array_record files.
def _random_access_examples(config: ml_collections.ConfigDict,
                            builder: tfds.core.DatasetBuilder, split: str):
  """Every example of `split`, in memory, and a function that loads one by index.

  Returns:
    (number of examples N, load: int64 index in [0, N) -> (uint8 [H, W, 3]
    image as `_decode` gives it, int32 label)).
  """
  if config.data.cache:
    def decode_to_record(example):
      decoded = _decode(config, example)
      return {'image': tf.io.serialize_tensor(decoded['image']), 'label': decoded['label']}
    ds = _map(_read_split(builder, split), decode_to_record,
              num_parallel_calls=tf.data.AUTOTUNE)
  else:
    keys = ('image', 'label', 'bbox') if config.data.crop_to_bbox else ('image', 'label')
    ds = _map(_read_split(builder, split), lambda ex: {k: ex[k] for k in keys})
  columns = {}
  for batch in tfds.as_numpy(ds.batch(1024).prefetch(1)):
    for key, values in batch.items():
      columns.setdefault(key, []).append(values)
  store = {key: tf.constant(np.concatenate(values)) for key, values in columns.items()}

  def load(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    example = {key: tf.gather(column, index) for key, column in store.items()}
    if config.data.cache:
      image = tf.ensure_shape(tf.io.parse_tensor(example['image'], tf.uint8),
                              [None, None, 3])
      return image, example['label']
    decoded = _decode(config, example)
    return decoded['image'], decoded['label']

  return int(store['label'].shape[0]), load


def decode_and_resize(encoded: tf.Tensor, size: int) -> tf.Tensor:
  """Encoded image (any format, size and channels) -> uint8 RGB [H, W, 3].

  The shorter side becomes `size`; the aspect ratio is kept.
  """
  return resize_shorter_side(decode_rgb(encoded), size)


def crop_to_box(image: tf.Tensor, box: tf.Tensor) -> tf.Tensor:
  """uint8 [H, W, 3] -> its pixels inside `box`, normalised (ymin, xmin, ymax, xmax).

  The crop covers every pixel the box touches, and at least one.
  """
  size = tf.cast(tf.shape(image)[:2], tf.float32)
  top_left = tf.cast(tf.floor(box[:2] * size), tf.int32)
  bottom_right = tf.maximum(tf.cast(tf.math.ceil(box[2:] * size), tf.int32), top_left + 1)
  return image[top_left[0]:bottom_right[0], top_left[1]:bottom_right[1]]


def decode_rgb(encoded: tf.Tensor) -> tf.Tensor:
  """Encoded image (JPEG, PNG, GIF's first frame, BMP; any channels) -> uint8 RGB [H, W, 3].

  Raises:
    tf.errors.InvalidArgumentError: (eagerly) the bytes are not an image.
  """
  return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def read_image(path: str) -> np.ndarray:
  """An image file (JPEG, PNG, GIF or BMP; any size and channels) -> uint8 RGB [H, W, 3].

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: `path` is not an image; the message names it.
  """
  try:
    return decode_rgb(tf.io.read_file(path)).numpy()
  except tf.errors.NotFoundError as e:
    raise MissingFileError(f'{path}: no such file.') from e
  except tf.errors.InvalidArgumentError as e:
    raise UserError(f'{path} is not an image that can be decoded (JPEG, PNG, GIF '
                    'or BMP).') from e


def resize_shorter_side(image: tf.Tensor, size: int) -> tf.Tensor:
  """uint8 [H, W, 3] -> uint8 [h, w, 3] with min(h, w) == size, antialiased."""
  image = tf.image.resize(image, _resized_shape(tf.shape(image)[:2], size),
                          antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def eval_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  """The evaluation crop: resized uint8 [H, W, 3] -> normalised float32 [size, size, 3].

  The central square, normalised with the ImageNet statistics.
  """
  return _normalize(_centre_crop(image, size))


def preprocess_for_eval(image: tf.Tensor | np.ndarray,
                        config: ml_collections.ConfigDict) -> tf.Tensor:
  """A decoded image as evaluation sees it: uint8 RGB [H, W, 3] -> float32 [S, S, 3].

  The shorter side is resized to config.data.resize_size, then the central
  S = config.data.image_size square is normalised: the same operations as
  `create_eval_dataset`, for images that do not come from a dataset.
  """
  check_crop_size(config)
  return eval_crop(resize_shorter_side(image, config.data.resize_size),
                   config.data.image_size)


def eval_crop_box(height: int, width: int, config: ml_collections.ConfigDict
                  ) -> tuple[float, float, float, float]:
  """The part of an image of `height` x `width` pixels that evaluation keeps.

  Returns:
    (left, top, right, bottom) in the image's pixel coordinates (continuous:
    pixel i covers [i, i + 1)) of the central square that `preprocess_for_eval`
    crops after resizing.
  """
  resized_height, resized_width = (
      int(x) for x in _resized_shape(tf.constant([height, width]), config.data.resize_size))
  top, left = _centre_offsets(resized_height, resized_width, config.data.image_size)
  scale_y, scale_x = resized_height / height, resized_width / width
  return (left / scale_x, top / scale_y, (left + config.data.image_size) / scale_x,
          (top + config.data.image_size) / scale_y)


def _resized_shape(shape: tf.Tensor, size: int) -> tf.Tensor:
  """[height, width] -> int32 [height', width'], the shorter side scaled to `size`."""
  shape = tf.cast(shape, tf.float32)
  return tf.cast(tf.round(shape * size / tf.reduce_min(shape)), tf.int32)


def _centre_offsets(height, width, size: int):
  """(top, left) of the central size x size square (ints or scalar tensors)."""
  return (height - size) // 2, (width - size) // 2


def _centre_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  """[H, W, 3] -> [size, size, 3], the central square."""
  top, left = _centre_offsets(tf.shape(image)[0], tf.shape(image)[1], size)
  return tf.ensure_shape(image[top:top + size, left:left + size],
                         [size, size, 3])


def _normalize(image: tf.Tensor) -> tf.Tensor:
  """uint8 [..., 3] -> float32, zero mean and unit variance on ImageNet."""
  return (tf.cast(image, tf.float32) - MEAN_RGB) / STDDEV_RGB


def _map(ds: tf.data.Dataset, fn: Callable[..., Any], **kwargs) -> tf.data.Dataset:
  """`ds.map(fn)` without AutoGraph.

  AutoGraph rewrites a function's Python source so that `if` and `for` on
  tensors become graph ops; it cost every program about 1.4 s of its start
  (profiled, a tiny train.py) and changes nothing here, where every Python
  branch is on the config, never on a tensor.
  """
  return ds.map(tf.autograph.experimental.do_not_convert(fn), **kwargs)


def _deterministic(ds: tf.data.Dataset) -> tf.data.Dataset:
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options)
