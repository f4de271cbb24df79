"""CUB-200-2011 as a TFDS dataset, from the archive the user already has.

200 bird species, the official split: 5,994 training and 5,794 test images,
one bounding box each. TFDS's own `caltech_birds2011` downloads from the web;
this builder reads `CUB_200_2011.tgz` (or its extracted folder) from the
manual directory instead:

  python -m clan_jax.cli.prepare_data --dataset=cub --manual_dir=PATH
"""
import tensorflow_datasets as tfds

from clan_jax.data import builder_utils
from clan_jax.user_errors import UserError

_ARCHIVE = 'CUB_200_2011.tgz'
_FOLDER = 'CUB_200_2011'


class Cub2002011(tfds.core.GeneratorBasedBuilder):
  """Caltech-UCSD Birds-200-2011: 200 species, official train/test split."""

  name = 'cub_200_2011'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  OFFICIAL_COUNTS = {'classes': 200, 'train': 5_994, 'test': 5_794}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download {_ARCHIVE} (1.1 GB) from
https://www.vision.caltech.edu/datasets/cub_200_2011/ and put it in the manual
directory, as it is or extracted:

  MANUAL_DIR/{_ARCHIVE}
or
  MANUAL_DIR/{_FOLDER}/images.txt, image_class_labels.txt,
    train_test_split.txt, classes.txt, bounding_boxes.txt and images/
"""

  def _info(self) -> tfds.core.DatasetInfo:
    return builder_utils.dataset_info(
        self, self.__doc__, 'https://www.vision.caltech.edu/datasets/cub_200_2011/')

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = builder_utils.dataset_root(
        dl_manager, [_FOLDER, '.'], marker='images.txt', archive=_ARCHIVE,
        instructions=self.MANUAL_DOWNLOAD_INSTRUCTIONS)

    # Every file is "<image id> <values>", ids 1-based.
    classes = builder_utils.read_rows(root / 'classes.txt', 2)
    label_of_class = {class_id: label
                      for label, (class_id, _) in enumerate(classes)}
    builder_utils.set_class_names(self, [name for _, name in classes],
                                  root / 'classes.txt')
    images = dict(builder_utils.read_rows(root / 'images.txt', 2))
    class_ids = dict(
        builder_utils.read_rows(root / 'image_class_labels.txt', 2))
    is_train = dict(builder_utils.read_rows(root / 'train_test_split.txt', 2))
    boxes = {image_id: values for image_id, *values in
             builder_utils.read_rows(root / 'bounding_boxes.txt', 5)}

    splits = {'train': [], 'test': []}
    for image_id, relative_path in images.items():
      for table, file in ((class_ids, 'image_class_labels.txt'),
                          (is_train, 'train_test_split.txt'),
                          (boxes, 'bounding_boxes.txt')):
        if image_id not in table:
          raise UserError(
              f'{root / file} has no line for image {image_id} '
              f'({relative_path}) of images.txt. The metadata files are from '
              'different copies: extract them again from the same archive.')
      if class_ids[image_id] not in label_of_class:
        raise UserError(
            f'{root / "image_class_labels.txt"}: image {image_id} has class '
            f'{class_ids[image_id]}, which {root / "classes.txt"} lacks.')
      x, y, width, height = (float(value) for value in boxes[image_id])
      splits['train' if is_train[image_id] == '1' else 'test'].append(
          builder_utils.Annotation(
              path=root / 'images' / relative_path,
              id=relative_path,
              label=label_of_class[class_ids[image_id]],
              box=(x, y, x + width, y + height)))

    builder_utils.warn_on_count_mismatches(
        self.name, {'classes': len(classes),
                    **{split: len(items) for split, items in splits.items()}},
        self.OFFICIAL_COUNTS)
    listed_in = str(root / 'images.txt')
    return {split: self._generate_examples(items, listed_in)
            for split, items in splits.items()}

  def _generate_examples(self, annotations: list[builder_utils.Annotation],
                         listed_in: str):
    return builder_utils.generate_examples(annotations, listed_in=listed_in)
