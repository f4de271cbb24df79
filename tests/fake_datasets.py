"""Tiny copies of CUB-200-2011, Stanford Cars and FGVC-Aircraft in their official formats.

A few classes, a few flat-coloured images per split, of varied sizes and kinds
(RGB, grayscale and CMYK JPEGs, a PNG named .jpg), written as the datasets'
own archives or folders, for the builders' tests and for the docs' commands.
"""
import dataclasses
import io
import pathlib
import tarfile

import numpy as np
import PIL.Image
import scipy.io

from clan_jax.data import fgvc_aircraft

# (width, height, PIL mode, file format): every kind of file the real datasets
# hold, in turn. Heights exceed FGVC-Aircraft's 20-pixel banner.
_KINDS = ((48, 36, 'RGB', 'JPEG'), (30, 44, 'L', 'JPEG'),
          (40, 40, 'CMYK', 'JPEG'), (36, 30, 'RGB', 'PNG'))


@dataclasses.dataclass
class Item:
  """One image of a tiny dataset and what its example must hold."""
  id: str
  splits: tuple[str, ...]
  label: int
  width: int
  height: int
  mode: str
  format: str
  colour: tuple[int, int, int]
  box: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax: pixel edges

  def encoded(self, banner: int = 0) -> bytes:
    """The image file: flat colour, its bottom `banner` rows white."""
    pixels = np.empty((self.height, self.width, 3), np.uint8)
    pixels[:] = self.colour
    pixels[self.height - banner:] = 255
    image = PIL.Image.fromarray(pixels)
    image = image.convert(self.mode) if self.mode != 'RGB' else image
    buffer = io.BytesIO()
    image.save(buffer, format=self.format, quality=95)
    return buffer.getvalue()


def _items(ids: list[str], splits: list[tuple[str, ...]],
           labels: list[int]) -> list[Item]:
  items = []
  for index, (item_id, item_splits, label) in enumerate(zip(ids, splits,
                                                            labels)):
    width, height, mode, fmt = _KINDS[index % len(_KINDS)]
    grey = mode == 'L'
    colour = (120, 120, 120) if grey else (40 + 15 * index, 180, 90)
    # The first box extends past the image's right and bottom edges.
    box = ((4.0, 6.0, width + 9.0, height + 5.0) if index == 0 else
           (2.0 + index, 3.0, width - 5.0, height - 4.0))
    items.append(Item(item_id, item_splits, label, width, height, mode, fmt,
                      colour, box))
  return items


def _tar(directory: pathlib.Path, archive: pathlib.Path, *names: str) -> None:
  """Archives directory/name for each name, as the official archives do."""
  with tarfile.open(archive, 'w:gz') as tar:
    for name in names:
      tar.add(directory / name, arcname=name)


# ---------------------------------------------------------------- CUB-200-2011

CUB_CLASSES = ('001.Black_footed_Albatross', '002.Laysan_Albatross',
                '003.Sooty_Albatross')


def _cub_items() -> list[Item]:
  # Per class: two training images and one test image.
  labels = [label for label in range(3) for _ in range(3)]
  ids = [f'{CUB_CLASSES[label]}/{CUB_CLASSES[label][4:]}_{i:04d}_{i}.jpg'
         for i, label in enumerate(labels)]
  splits = [('test',) if i % 3 == 2 else ('train',) for i in range(9)]
  return _items(ids, splits, labels)


def write_cub(manual_dir: pathlib.Path, *, archive: bool) -> list[Item]:
  """CUB_200_2011/ as in CUB_200_2011.tgz, or that archive (ids 1-based)."""
  items = _cub_items()
  root = manual_dir / 'CUB_200_2011'
  for item in items:
    path = root / 'images' / item.id
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(item.encoded())

  def write(name: str, lines) -> None:
    (root / name).write_text(''.join(f'{line}\n' for line in lines))

  write('classes.txt', (f'{i} {name}' for i, name in
                        enumerate(CUB_CLASSES, start=1)))
  write('images.txt', (f'{i} {item.id}' for i, item in
                       enumerate(items, start=1)))
  write('image_class_labels.txt', (f'{i} {item.label + 1}' for i, item in
                                   enumerate(items, start=1)))
  write('train_test_split.txt', (f'{i} {int(item.splits == ("train",))}'
                                 for i, item in enumerate(items, start=1)))
  # x, y, width, height.
  write('bounding_boxes.txt', (
      f'{i} {x0:.1f} {y0:.1f} {x1 - x0:.1f} {y1 - y0:.1f}'
      for i, (x0, y0, x1, y1) in enumerate((item.box for item in items),
                                           start=1)))
  if archive:
    (manual_dir / 'attributes.txt').write_text('1 has_bill_shape::curved\n')
    _tar(manual_dir, manual_dir / 'CUB_200_2011.tgz', 'CUB_200_2011',
         'attributes.txt')
    for path in sorted(root.rglob('*'), reverse=True):
      path.rmdir() if path.is_dir() else path.unlink()
    root.rmdir()
    (manual_dir / 'attributes.txt').unlink()
  return items


# ---------------------------------------------------------------- FGVC-Aircraft

# Real variant names: spaces and slashes included.
VARIANTS = ('707-320', 'Cessna 172', 'F-16A/B', 'F/A-18')


def _aircraft_items() -> list[Item]:
  # Per variant: one image in train, one in val (both in trainval), one in test.
  labels = [label for label in range(4) for _ in range(3)]
  splits = [(('train', 'trainval'), ('val', 'trainval'), ('test',))[i % 3]
            for i in range(12)]
  items = _items([f'{1000000 + 7 * i:07d}' for i in range(12)], splits, labels)
  # A box whose bottom lies in the banner: clipped to the cropped image.
  items[1].box = (2.0, 5.0, 20.0, float(items[1].height - 3))
  return items


def write_aircraft(manual_dir: pathlib.Path, *, archive: bool) -> list[Item]:
  """fgvc-aircraft-2013b/data/ as in fgvc-aircraft-2013b.tar.gz, or that."""
  items = _aircraft_items()
  data = manual_dir / 'fgvc-aircraft-2013b' / 'data'
  (data / 'images').mkdir(parents=True)
  for item in items:
    (data / 'images' / f'{item.id}.jpg').write_bytes(
        item.encoded(banner=fgvc_aircraft.BANNER_HEIGHT))
  (data / 'variants.txt').write_text(''.join(f'{v}\n' for v in VARIANTS))
  for split in fgvc_aircraft.SPLITS:
    (data / f'images_variant_{split}.txt').write_text(''.join(
        f'{item.id} {VARIANTS[item.label]}\n' for item in items
        if split in item.splits))
  # 1-based inclusive pixel coordinates.
  (data / 'images_box.txt').write_text(''.join(
      f'{item.id} {x0 + 1:.0f} {y0 + 1:.0f} {x1:.0f} {y1:.0f}\n'
      for item in items for x0, y0, x1, y1 in [item.box]))
  if archive:
    _tar(manual_dir, manual_dir / 'fgvc-aircraft-2013b.tar.gz',
         'fgvc-aircraft-2013b')
    for path in sorted((manual_dir / 'fgvc-aircraft-2013b').rglob('*'),
                       reverse=True):
      path.rmdir() if path.is_dir() else path.unlink()
    (manual_dir / 'fgvc-aircraft-2013b').rmdir()
  return items


# ---------------------------------------------------------------- Stanford Cars

CAR_CLASSES = ('AM General Hummer SUV 2000', 'Acura RL Sedan 2012',
                'Ram C/V Cargo Van Minivan 2012')
# The test labels of Kaggle's copy, named as a browser names a second download.
KAGGLE_TEST_LABELS = 'cars_test_annos_withlabels (1).mat'


def _car_items(*, all_in_one: bool) -> list[Item]:
  labels = [label for label in range(3) for _ in range(3)]
  splits = [('test',) if i % 3 == 2 else ('train',) for i in range(9)]
  if all_in_one:
    ids = [f'car_ims/{i:06d}.jpg' for i in range(1, 10)]
  else:  # numbered per split
    ids, counts = [], {'train': 0, 'test': 0}
    for (split,) in splits:
      counts[split] += 1
      ids.append(f'cars_{split}/{counts[split]:05d}.jpg')
  items = _items(ids, splits, labels)
  for item in items:  # the .mat's boxes are whole pixels
    item.box = tuple(float(round(value)) for value in item.box)
  return items


def _cell(strings) -> np.ndarray:
  """A MATLAB cell array of strings (1 x n), as loadmat returns it."""
  cell = np.empty((1, len(strings)), dtype=object)
  for i, string in enumerate(strings):
    cell[0, i] = np.array([string])
  return cell


def _struct(items: list[Item], **fields) -> np.ndarray:
  """A MATLAB struct array (1 x n) of annotations, as in the devkit.

  Args:
    items: one struct per item, with its box (1-based inclusive pixels).
    **fields: more fields: name -> function of an item.
  """
  names = ['bbox_x1', 'bbox_y1', 'bbox_x2', 'bbox_y2', *fields]
  struct = np.zeros((1, len(items)), dtype=[(name, object) for name in names])
  for i, item in enumerate(items):
    x0, y0, x1, y1 = item.box
    values = [x0 + 1, y0 + 1, x1, y1] + [f(item) for f in fields.values()]
    struct[0, i] = tuple(
        np.array([value]) if isinstance(value, str) else
        np.array([[value]], dtype=np.uint16) for value in values)
  return struct


def write_cars(manual_dir: pathlib.Path, layout: str) -> list[Item]:
  """Stanford Cars in one of the layouts that copies come in.

  Args:
    manual_dir: where to write.
    layout: 'devkit_archives' (the official cars_train.tgz, cars_test.tgz,
      car_devkit.tgz and cars_test_annos_withlabels.mat), 'kaggle' (the same
      files as Kaggle has them: extracted into nested folders, the test labels
      as KAGGLE_TEST_LABELS) or 'all_in_one' (cars_annos.mat and car_ims/).
  """
  items = _car_items(all_in_one=layout == 'all_in_one')
  for item in items:
    path = manual_dir / item.id
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(item.encoded())
  fname = lambda item: item.id.split('/')[1]
  label = lambda item: item.label + 1
  if layout == 'all_in_one':
    scipy.io.savemat(manual_dir / 'cars_annos.mat', {
        'annotations': _struct(
            items, relative_im_path=lambda item: item.id, **{'class': label},
            test=lambda item: int(item.splits == ('test',))),
        'class_names': _cell(CAR_CLASSES)})
    return items

  train = [item for item in items if item.splits == ('train',)]
  test = [item for item in items if item.splits == ('test',)]
  devkit = manual_dir / 'devkit'
  devkit.mkdir()
  scipy.io.savemat(devkit / 'cars_meta.mat',
                   {'class_names': _cell(CAR_CLASSES)})
  scipy.io.savemat(devkit / 'cars_train_annos.mat', {
      'annotations': _struct(train, **{'class': label}, fname=fname)})
  scipy.io.savemat(devkit / 'cars_test_annos.mat', {
      'annotations': _struct(test, fname=fname)})
  test_labels = (KAGGLE_TEST_LABELS if layout == 'kaggle' else
                 'cars_test_annos_withlabels.mat')
  scipy.io.savemat(manual_dir / test_labels, {
      'annotations': _struct(test, **{'class': label}, fname=fname)})
  for folder, archive in (('cars_train', 'cars_train.tgz'),
                          ('cars_test', 'cars_test.tgz'),
                          ('devkit', 'car_devkit.tgz')):
    nested = manual_dir / folder
    if layout == 'devkit_archives':
      _tar(manual_dir, manual_dir / archive, folder)
      for path in nested.iterdir():
        path.unlink()
      nested.rmdir()
    else:  # Kaggle: cars_train/cars_train/, ..., car_devkit/devkit/
      parent = manual_dir / ('car_devkit' if folder == 'devkit' else
                             f'{folder}_outer')
      parent.mkdir()
      nested.rename(parent / folder)
      if folder != 'devkit':
        parent.rename(manual_dir / folder)
  return items
