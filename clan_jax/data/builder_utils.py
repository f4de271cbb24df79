"""What the builders of CUB-200-2011, Stanford Cars and FGVC-Aircraft share.

The three are TFDS manual downloads: the user places the archives (or their
extracted folders) in the manual directory. This module finds the files there,
extracting an archive when needed, reads the metadata, turns every image into
an RGB JPEG, normalises the bounding boxes, and compares the split sizes with
the official ones.

Every error names the file at fault and how to fix it. Errors are raised while
TFDS writes to a temporary directory, so a failed preparation never leaves a
dataset that a later run would take as complete.
"""
from collections.abc import Iterable, Iterator, Mapping, Sequence
import dataclasses
import io

from absl import logging
from etils import epath
import PIL.Image
import tensorflow_datasets as tfds

from clan_jax.user_errors import MissingFileError, UserError

# Quality of the JPEGs written for images that are not RGB JPEGs already (the
# others are stored byte for byte).
_JPEG_QUALITY = 95


@dataclasses.dataclass(frozen=True)
class Annotation:
  """One image of a split, as the dataset's metadata describes it."""
  path: epath.Path  # the image file
  id: str  # unique in the dataset, e.g. the file name
  label: int  # index into the class names
  # xmin, ymin, xmax, ymax in pixels: (0, 0) is the image's top-left corner and
  # (width, height) its bottom-right one; a box may extend past the image.
  box: tuple[float, float, float, float]


def features() -> tfds.features.FeaturesDict:
  """The features of the three datasets.

  The class names come from the user's metadata files: `_split_generators`
  sets them (see `set_class_names`), and a prepared dataset stores them.
  """
  return tfds.features.FeaturesDict({
      # Variable size; always 3-channel RGB, whatever the source file was.
      'image': tfds.features.Image(shape=(None, None, 3),
                                   encoding_format='jpeg'),
      'label': tfds.features.ClassLabel(),
      'bbox': tfds.features.BBoxFeature(),  # normalised ymin, xmin, ymax, xmax
      'id': tfds.features.Text(),
  })


def dataset_info(builder: tfds.core.GeneratorBasedBuilder, description: str,
                 homepage: str) -> tfds.core.DatasetInfo:
  """The DatasetInfo of the three datasets, which differ only in these texts."""
  return tfds.core.DatasetInfo(
      builder=builder,
      description=description,
      features=features(),
      supervised_keys=('image', 'label'),
      homepage=homepage,
  )


def set_class_names(builder: tfds.core.GeneratorBasedBuilder,
                    names: Sequence[str], source: epath.Path) -> None:
  duplicates = sorted({name for name in names if names.count(name) > 1})
  if duplicates:
    raise UserError(f'{source} names these classes more than once: '
                    f'{duplicates}. The file is damaged: extract it again.')
  builder.info.features['label'].names = list(names)


def manual_dir(dl_manager: tfds.download.DownloadManager) -> epath.Path:
  """The manual directory; FileNotFoundError if it is missing or empty."""
  try:
    return dl_manager.manual_dir
  except AssertionError as e:  # TFDS's message names the directory
    raise MissingFileError(
        f'{e}\n(Pass the directory with --manual_dir to '
        'python -m clan_jax.cli.prepare_data.)') from e


def find(dl_manager: tfds.download.DownloadManager, root: epath.Path,
         candidates: Sequence[str], *, marker: str | None = None,
         archives: Sequence[str] = ()) -> epath.Path | None:
  """The first of root/candidate that exists (and contains `marker`), or None.

  When none does and one of `archives` is in root, that archive is extracted
  (once: TFDS keeps the extraction in its download directory) and the
  candidates are looked up inside it instead.

  Args:
    dl_manager: extracts the archives.
    root: where to look, usually the manual directory.
    candidates: relative paths, in order of preference; '.' is root itself.
    marker: a file that a candidate directory must contain, so that a folder
      of the same name but other content is not taken for the dataset.
    archives: file names of archives, relative to root, holding the candidates.
  """
  def first(base: epath.Path) -> epath.Path | None:
    for candidate in candidates:
      path = base / candidate
      if path.exists() and (marker is None or (path / marker).exists()):
        return path
    return None

  found = first(root)
  if found is not None:
    return found
  for archive in archives:
    if (root / archive).exists():
      logging.info('Extracting %s (once; it is kept in %s).', root / archive,
                   dl_manager.download_dir)
      return first(dl_manager.extract(root / archive))
  return None


def dataset_root(dl_manager: tfds.download.DownloadManager,
                 candidates: Sequence[str], *, marker: str, archive: str,
                 instructions: str) -> epath.Path:
  """The dataset's folder in the manual directory (see `find`), or a clear error.

  `candidates[0]` is the folder name the instructions ask for.
  """
  root_dir = manual_dir(dl_manager)
  root = find(dl_manager, root_dir, candidates, marker=marker, archives=[archive])
  if root is None:
    raise MissingFileError(
        f'Neither {root_dir / archive} nor {root_dir / candidates[0] / marker} '
        f'exists. {instructions}')
  return root


def read_rows(path: epath.Path, num_fields: int) -> list[list[str]]:
  """The lines of a whitespace-separated metadata file, split into fields.

  The last field takes the rest of the line, spaces included (class names
  such as 'Cessna 172').

  Raises:
    FileNotFoundError: the file is missing.
    ValueError: a line has fewer fields.
  """
  if not path.exists():
    raise MissingFileError(
        f'Metadata file {path} is missing. Extract the complete archive again '
        'into the manual directory (see the instructions of the dataset).')
  rows = []
  for number, line in enumerate(path.read_text().splitlines(), start=1):
    if not line.strip():
      continue
    fields = line.split(maxsplit=num_fields - 1)
    if len(fields) != num_fields:
      raise UserError(
          f'{path}, line {number}: expected {num_fields} fields, got '
          f'{line!r}. The file is damaged: extract it again from the archive.')
    rows.append([field.strip() for field in fields])
  return rows


def generate_examples(annotations: Iterable[Annotation], *, listed_in: str,
                      crop_bottom: int = 0) -> Iterator[tuple[str, dict]]:
  """TFDS examples (key, features) of the annotated images.

  Args:
    annotations: the images of one split.
    listed_in: the metadata file that lists the images, for error messages.
    crop_bottom: rows cut off the bottom of every image (FGVC-Aircraft's
      copyright banner); boxes are clipped to what remains.
  """
  for annotation in annotations:
    jpeg, width, height = rgb_jpeg(annotation.path, listed_in=listed_in,
                                   crop_bottom=crop_bottom)
    yield annotation.id, {
        'image': jpeg,
        'label': annotation.label,
        'bbox': normalized_bbox(annotation.box, width=width, height=height),
        'id': annotation.id,
    }


def rgb_jpeg(path: epath.Path, *, listed_in: str,
             crop_bottom: int = 0) -> tuple[bytes, int, int]:
  """An image file as an RGB JPEG: (bytes, width, height).

  RGB JPEGs are returned byte for byte, without a lossy re-encoding. Anything
  else (grayscale or CMYK JPEGs, PNGs named .jpg, ...) is converted, since a
  CMYK JPEG does not decode in TensorFlow and the features promise 3 channels.
  EXIF orientation is ignored, as TensorFlow's decoder and the boxes do.

  Raises:
    FileNotFoundError: the image is missing.
    ValueError: the image cannot be decoded, or is not taller than crop_bottom.
  """
  try:
    data = path.read_bytes()
  except FileNotFoundError as e:
    raise MissingFileError(
        f'Image {path}, listed in {listed_in}, is missing. Extract the '
        'complete archive again into the manual directory.') from e
  try:
    with PIL.Image.open(io.BytesIO(data)) as image:
      image.load()  # decodes all of it: catches truncated files too
      if image.format == 'JPEG' and image.mode == 'RGB' and not crop_bottom:
        return data, image.width, image.height
      rgb = image.convert('RGB')
  except (OSError, ValueError, SyntaxError) as e:  # what PIL raises
    raise UserError(
        f'Image {path}, listed in {listed_in}, cannot be decoded ({e}). '
        'The file is damaged: extract it again from the archive.') from e
  if crop_bottom:
    if rgb.height <= crop_bottom:
      raise UserError(
          f'Image {path}, listed in {listed_in}, is {rgb.height} pixels high: '
          f'nothing is left after cropping {crop_bottom} rows off its bottom. '
          'Prepare the config that keeps the banner for such images.')
    rgb = rgb.crop((0, 0, rgb.width, rgb.height - crop_bottom))
  buffer = io.BytesIO()
  rgb.save(buffer, format='JPEG', quality=_JPEG_QUALITY)
  return buffer.getvalue(), rgb.width, rgb.height


def normalized_bbox(box: tuple[float, float, float, float], *, width: int,
                    height: int) -> tfds.features.BBox:
  """A box in pixels (see `Annotation.box`) -> TFDS's normalised BBox.

  Some official boxes extend past their image by a pixel or more (and past
  FGVC-Aircraft's cropped banner): they are clipped to the image.
  """
  xmin, ymin, xmax, ymax = box

  def clip(value: float, size: int) -> float:
    return min(max(value / size, 0.0), 1.0)

  xmin, xmax = clip(xmin, width), clip(xmax, width)
  ymin, ymax = clip(ymin, height), clip(ymax, height)
  # A box entirely outside the image collapses to its nearest edge.
  return tfds.features.BBox(ymin=min(ymin, ymax), xmin=min(xmin, xmax),
                            ymax=ymax, xmax=xmax)


def count_mismatches(counts: Mapping[str, int],
                     official: Mapping[str, int]) -> list[str]:
  """Where `counts` differ from the official numbers, one line each.

  Args:
    counts: {'classes': n, split: examples, ...} of this dataset.
    official: the same keys, the official numbers.
  """
  return [f'{key}: {counts.get(key, 0):,}, expected {expected:,}'
          for key, expected in official.items()
          if counts.get(key, 0) != expected]


def warn_on_count_mismatches(name: str, counts: Mapping[str, int],
                             official: Mapping[str, int]) -> None:
  """Logs a warning if the metadata lists other numbers than the official."""
  mismatches = count_mismatches(counts, official)
  if mismatches:
    logging.warning(
        '%s: the metadata in the manual directory differs from the official '
        'dataset (a partial copy?): %s', name, '; '.join(mismatches))
