"""Speed of the input pipeline alone, at the paper's 448x448, on this host's CPUs.

  python -m benchmarks.input_pipeline
  python -m benchmarks.input_pipeline --num_images=2000 --data_dir=/tmp/cub_bench

It writes (once: a prepared --data_dir is reused) a CUB-200-2011 look-alike in
the official layout: images.txt, image_class_labels.txt, train_test_split.txt,
classes.txt, bounding_boxes.txt and images/<class>/<file>.jpg, with
--num_images JPEGs of CUB's sizes (300-500 x 250-500 pixels, quality 90) whose
content is smooth structure plus grain, so that they decode like photographs,
not like flat colour. The real builder (`cub_200_2011`) prepares it, half the
images in each split as in CUB.

It then times `create_train_dataset` of configs/cub.py (resize 512, random
crop 448, flip, batch 32) with config.data.cache False and True, iterated as numpy
batches as the trainer does. Each first runs one untimed epoch, whose first
batch includes reading the train split into memory (and, cached, decoding
it: `input_pipeline._random_access_examples`); its time is printed
separately. Then --epochs epochs are timed. The uncached pipeline is also timed with tf.data's
thread pool held to one thread. Last, one pass of `create_eval_dataset` over
the test split (uncached). Each timed row gives images per second, the cores
the process kept busy (its CPU time / wall time) and images per CPU-second:
the rate of one core, which a host with more cores multiplies.
"""
import copy
import math
import os
import platform
import resource
import tempfile
import time

from absl import app, flags
import numpy as np
import PIL.Image
import tensorflow as tf
import tensorflow_datasets as tfds

from clan_jax.data import input_pipeline
from configs import cub

flags.DEFINE_string('data_dir', os.path.join(tempfile.gettempdir(),
                                             'clan_jax_input_pipeline_bench'),
                    'TFDS data directory of the generated dataset (reused if '
                    'already prepared there).')
flags.DEFINE_integer('num_images', 600, 'Images of the generated dataset, '
                     'train and test together.')
flags.DEFINE_integer('num_classes', 200, 'Classes of the generated dataset.')
flags.DEFINE_integer('image_size', 448, 'Crop size (config.data.image_size).')
flags.DEFINE_integer('resize_size', 512, 'Shorter side before cropping '
                     '(config.data.resize_size).')
flags.DEFINE_integer('batch_size', 32, 'Training batch size.')
flags.DEFINE_integer('eval_batch_size', 64, 'Evaluation batch size.')
flags.DEFINE_float('epochs', 10.0, 'Timed epochs of each training pipeline.')
FLAGS = flags.FLAGS


def _photo_like(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """uint8 [height, width, 3]: noise at four scales, smoothly upsampled, + grain."""
  image = np.zeros((height, width, 3), np.float32)
  for cell, amplitude in ((64, 60.0), (16, 30.0), (4, 25.0), (2, 18.0)):
    small = rng.normal(0.0, amplitude, (math.ceil(height / cell) + 1,
                                        math.ceil(width / cell) + 1, 3))
    for channel in range(3):
      image[..., channel] += np.asarray(
          PIL.Image.fromarray(small[..., channel].astype(np.float32), mode='F')
          .resize((width, height), PIL.Image.BICUBIC))
  image += rng.normal(0.0, 8.0, image.shape)
  return np.clip(image + 128.0, 0, 255).astype(np.uint8)


def _write_cub(root: str, num_images: int, num_classes: int) -> None:
  """A CUB_200_2011/ folder in the official format under `root` (ids 1-based)."""
  rng = np.random.default_rng(0)
  classes = [f'{i:03d}.Species_{i:03d}' for i in range(1, num_classes + 1)]
  rows = {name: [] for name in ('images', 'image_class_labels',
                                'train_test_split', 'bounding_boxes')}
  for image_id in range(1, num_images + 1):
    label = (image_id - 1) % num_classes
    relative = f'{classes[label]}/{classes[label][4:]}_{image_id:04d}_{image_id}.jpg'
    width, height = int(rng.integers(300, 501)), int(rng.integers(250, 501))
    path = os.path.join(root, 'images', relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    PIL.Image.fromarray(_photo_like(rng, height, width)).save(path, quality=90)
    box_w, box_h = width * rng.uniform(0.3, 0.9), height * rng.uniform(0.3, 0.9)
    x, y = rng.uniform(0, width - box_w), rng.uniform(0, height - box_h)
    rows['images'].append(f'{image_id} {relative}')
    rows['image_class_labels'].append(f'{image_id} {label + 1}')
    rows['train_test_split'].append(f'{image_id} {image_id % 2}')
    rows['bounding_boxes'].append(
        f'{image_id} {x:.1f} {y:.1f} {box_w:.1f} {box_h:.1f}')
  rows['classes'] = [f'{i} {name}' for i, name in enumerate(classes, start=1)]
  for name, lines in rows.items():
    with open(os.path.join(root, f'{name}.txt'), 'w') as f:
      f.write(''.join(f'{line}\n' for line in lines))


def prepare_dataset(data_dir: str) -> None:
  """Writes and prepares the dataset in data_dir, unless it is there already."""
  builder = tfds.builder('cub_200_2011', data_dir=data_dir)
  if builder.is_prepared():
    count = sum(split.num_examples for split in builder.info.splits.values())
    if count != FLAGS.num_images:
      raise ValueError(f'{data_dir} holds a prepared cub_200_2011 of {count} '
                       f'images, not --num_images={FLAGS.num_images}: pass '
                       'another --data_dir.')
    print(f'Reusing the dataset prepared in {data_dir}.')
    return
  manual_dir = os.path.join(data_dir, 'manual')
  started = time.perf_counter()
  _write_cub(os.path.join(manual_dir, 'CUB_200_2011'), FLAGS.num_images,
             FLAGS.num_classes)
  written = time.perf_counter() - started
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  jpegs = [os.path.join(d, f) for d, _, files in
           os.walk(os.path.join(manual_dir, 'CUB_200_2011', 'images')) for f in files]
  mean_kib = np.mean([os.path.getsize(p) for p in jpegs]) / 1024
  print(f'Wrote {len(jpegs)} JPEGs (mean {mean_kib:.0f} KiB) in {written:.1f} s, '
        f'prepared in {time.perf_counter() - started - written:.1f} s: {data_dir}')


def _consume(iterator, num_batches: int) -> tuple[float, float]:
  """(wall seconds, CPU seconds of the whole process) to take num_batches."""
  started, cpu_started = time.perf_counter(), time.process_time()
  for _ in range(num_batches):
    next(iterator)
  return time.perf_counter() - started, time.process_time() - cpu_started


def _rate(images: int, wall_s: float, cpu_s: float) -> str:
  return (f'{images:6d} img {wall_s:6.1f} s {images / wall_s:7.1f} img/s  '
          f'{cpu_s / wall_s:4.2f} cores {images / cpu_s:6.1f} img/CPU-s')


def time_train(config, builder, *, cache: bool, threads: int = 0) -> str:
  config = copy.deepcopy(config)
  config.data.cache = cache
  # Building the dataset reads the train split into memory (and, cached,
  # decodes it: input_pipeline._random_access_examples), so the first batch's
  # time counts from here.
  started = time.perf_counter()
  ds = input_pipeline.create_train_dataset(config, builder)
  if threads:
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    ds = ds.with_options(options)
  examples = input_pipeline.num_examples(builder, config.data.train_split)
  epoch = math.ceil(examples / config.data.batch_size)
  timed = math.ceil(FLAGS.epochs * examples / config.data.batch_size)
  iterator = input_pipeline.as_numpy(ds)
  first_s = _consume(iterator, 1)[0] + time.perf_counter() - started
  warm_s = first_s + _consume(iterator, epoch - 1)[0]
  timed_s = _consume(iterator, timed)
  name = f'train, cache={cache}' + (f', {threads}-thread pool' if threads else '')
  return (f'{name:<33} {first_s:6.1f} s {warm_s:6.1f} s '
          f'{epoch * config.data.batch_size / warm_s:7.1f} img/s   '
          + _rate(timed * config.data.batch_size, *timed_s))


def time_eval(config, builder) -> str:
  config = copy.deepcopy(config)
  config.data.cache = False
  ds, num_batches = input_pipeline.create_eval_dataset(config, builder, 'test')
  examples = input_pipeline.num_examples(builder, 'test')
  seconds = _consume(input_pipeline.as_numpy(ds), num_batches)
  return f'{"eval (test), cache=False":<33} {"":>31}   ' + _rate(examples, *seconds)


def _cache_bytes(resize_size: int) -> list[int]:
  """Bytes that the cache holds per training image: uint8 at its resized shape.

  Read from the generated files; empty for a data_dir prepared otherwise.
  """
  root = os.path.join(FLAGS.data_dir, 'manual', 'CUB_200_2011')
  sizes = []
  if not os.path.exists(os.path.join(root, 'images.txt')):
    return sizes
  with open(os.path.join(root, 'images.txt')) as f:
    for image_id, path in (line.split() for line in f if line.strip()):
      if int(image_id) % 2:  # training, as _write_cub splits
        with PIL.Image.open(os.path.join(root, 'images', path)) as image:
          sizes.append(3 * math.prod(round(x * resize_size / min(image.size))
                                     for x in image.size))
  return sizes


def _cpu_model() -> str:
  with open('/proc/cpuinfo') as f:
    for line in f:
      if line.startswith('model name'):
        return line.split(':', 1)[1].strip()
  return platform.processor() or 'unknown CPU'


def main(argv):
  del argv
  prepare_dataset(FLAGS.data_dir)
  config = cub.get_config()
  config.data.data_dir = FLAGS.data_dir
  config.data.image_size, config.data.resize_size = FLAGS.image_size, FLAGS.resize_size
  config.data.batch_size, config.data.eval_batch_size = FLAGS.batch_size, FLAGS.eval_batch_size
  builder = input_pipeline.get_dataset_builder(config)
  splits = {name: split.num_examples for name, split in builder.info.splits.items()}
  load = ', '.join(f'{x:.2f}' for x in os.getloadavg())
  print(f'{len(os.sched_getaffinity(0))} cores ({_cpu_model()}), TF {tf.__version__}, '
        f'TFDS {tfds.__version__}, Python {platform.python_version()}; '
        f'load average {load} at start')
  print(f'cub_200_2011 look-alike {splits}; resize {config.data.resize_size}, crop '
        f'{config.data.image_size}, batch {config.data.batch_size} (eval '
        f'{config.data.eval_batch_size}); '
        f'{FLAGS.epochs:g} timed epochs after 1 untimed')
  print(f'{"pipeline":<33} {"untimed: 1st batch, 1st epoch":>31}   '
        f'{"timed":>30}', flush=True)
  for row in (lambda: time_train(config, builder, cache=False),
              lambda: time_train(config, builder, cache=False, threads=1),
              lambda: time_train(config, builder, cache=True),
              lambda: time_eval(config, builder)):
    print(row(), flush=True)
  cache_bytes = _cache_bytes(config.data.resize_size)
  if cache_bytes:
    print(f'cache: {np.mean(cache_bytes) / 2**20:.2f} MiB per training image '
          f'(uint8, shorter side {config.data.resize_size}), '
          f'{np.sum(cache_bytes) / 2**30:.2f} GiB here')
  # ru_maxrss is in KiB on Linux.
  print('process peak RSS '
        f'{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB')


if __name__ == '__main__':
  app.run(main)
