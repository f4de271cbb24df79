"""FGVC-Aircraft 2013b as a TFDS dataset, from the archive the user already has.

100 aircraft variants (e.g. 'Boeing 737-700', 'F-16A/B'), one bounding box
per image. The fine-grained literature trains on `trainval` (6,667 images) and
tests on `test` (3,333); the official `train` (3,334) and `val` (3,333)
subsets, whose union is `trainval`, are there too.

Each image ends in a 20-pixel copyright banner at its bottom, which the
dataset's README says to remove: the default config crops it off (boxes are
then normalised against the cropped height and clipped to it), and
'variant_with_banner' keeps the images whole.

  python -m clan_jax.cli.prepare_data --dataset=aircraft --manual_dir=PATH
"""
import dataclasses

import tensorflow_datasets as tfds

from clan_jax.data import builder_utils
from clan_jax.user_errors import UserError

_ARCHIVE = 'fgvc-aircraft-2013b.tar.gz'
_FOLDER = 'fgvc-aircraft-2013b/data'
BANNER_HEIGHT = 20  # pixels, at the bottom of every image
SPLITS = ('trainval', 'test', 'train', 'val')


@dataclasses.dataclass(eq=False, kw_only=True)
class AircraftConfig(tfds.core.BuilderConfig):
  """crop_banner: cut the copyright banner off the bottom of the images."""
  crop_banner: bool = True


class FgvcAircraft(tfds.core.GeneratorBasedBuilder):
  """FGVC-Aircraft 2013b at the variant level: 100 classes."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      AircraftConfig(name='variant', crop_banner=True, description=(
          f'The bottom {BANNER_HEIGHT} pixels (copyright banner) cropped '
          'off.')),
      AircraftConfig(name='variant_with_banner', crop_banner=False,
                     description='Whole images, copyright banner included.'),
  ]
  OFFICIAL_COUNTS = {'classes': 100, 'trainval': 6_667, 'test': 3_333,
                     'train': 3_334, 'val': 3_333}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download {_ARCHIVE} (2.75 GB, images and annotations) from
https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ and put it in the manual
directory, as it is or extracted:

  MANUAL_DIR/{_ARCHIVE}
or
  MANUAL_DIR/{_FOLDER}/variants.txt, images_box.txt,
    images_variant_{{train,val,trainval,test}}.txt and images/
"""

  def _info(self) -> tfds.core.DatasetInfo:
    return builder_utils.dataset_info(
        self, __doc__, 'https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/')

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = builder_utils.dataset_root(
        dl_manager, [_FOLDER, 'data', '.'], marker='variants.txt', archive=_ARCHIVE,
        instructions=self.MANUAL_DOWNLOAD_INSTRUCTIONS)

    # Variant names hold spaces and slashes: one name per line, as it is.
    variants_file = root / 'variants.txt'
    names = [name for (name,) in builder_utils.read_rows(variants_file, 1)]
    builder_utils.set_class_names(self, names, variants_file)
    label_of = {name: label for label, name in enumerate(names)}
    # "ID xmin ymin xmax ymax", 1-based inclusive pixel coordinates.
    boxes = {image_id: [float(value) for value in values] for image_id, *values
             in builder_utils.read_rows(root / 'images_box.txt', 5)}

    generators, counts = {}, {'classes': len(names)}
    for split in SPLITS:
      listed_in = root / f'images_variant_{split}.txt'
      annotations = []
      for image_id, variant in builder_utils.read_rows(listed_in, 2):
        if variant not in label_of:
          raise UserError(f'{listed_in}: image {image_id} has variant '
                          f'{variant!r}, which {variants_file} lacks.')
        if image_id not in boxes:
          raise UserError(
              f'{root / "images_box.txt"} has no box for image {image_id} of '
              f'{listed_in}. The metadata files are from different copies: '
              'extract them again from the same archive.')
        xmin, ymin, xmax, ymax = boxes[image_id]
        annotations.append(builder_utils.Annotation(
            path=root / 'images' / f'{image_id}.jpg', id=image_id,
            label=label_of[variant], box=(xmin - 1, ymin - 1, xmax, ymax)))
      counts[split] = len(annotations)
      generators[split] = self._generate_examples(annotations, str(listed_in))
    builder_utils.warn_on_count_mismatches(self.name, counts,
                                           self.OFFICIAL_COUNTS)
    return generators

  def _generate_examples(self, annotations: list[builder_utils.Annotation],
                         listed_in: str):
    crop = BANNER_HEIGHT if self.builder_config.crop_banner else 0
    return builder_utils.generate_examples(annotations, listed_in=listed_in,
                                           crop_bottom=crop)
