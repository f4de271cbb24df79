"""A fine-grained synthetic dataset of birds, generated locally as a TFDS dataset.

Every image shows one "bird" (body, head, beak, eye, tail) perched on a branch
in front of a cluttered background. Pose, size, position, facing direction,
plumage colour, background and global colour vary from image to image,
independently of the class, so the global appearance says nothing about the
class. Classes differ only in small local details, each a few pixels across:

  wing:  colour of the wing patch (red | yellow | blue | white)
  eye:   plain eye | white ring around it
  tail:  plain tail | pale bars across it
  beak:  beak length (short | long)

A label is a mixed-radix number of details, `wing` varying fastest (see
`species`): up to 32 classes, and the 10 classes of the default config differ
in wing colour, eye ring and, for two of them, tail bars.

Two knobs make the task harder for every model alike, both off by default:
`min_scale` lets birds be drawn smaller (their details down to a pixel or
two), and `occluders` draws up to that many leaves in front of each bird,
which may hide part of it, a detail included.

`source=True` draws a coarser pretraining task instead, disjoint from the
species above (`clan_jax/experiments/source_pretraining.py`): 16 classes, wing
patches in four other colours (green, orange, purple, black) times eye times
beak, with the tail drawn at random in every image. Its labels never teach
the tail bars, so fine-tuning must learn a new local detail, as a
fine-grained dataset's species differ in parts that ImageNet's classes never
named.

Images are a pure function of (seed, split, example index): the same
parameters give byte-identical examples, whatever the generation order.

  builder = synthetic_builder(data_dir, num_classes=10, train_per_class=60,
                              test_per_class=20, image_size=72, seed=0)
  builder.download_and_prepare()  # a few seconds; nothing is downloaded
"""
import colorsys
import dataclasses
import math
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from clan_jax.user_errors import UserError


class Species(NamedTuple):
  """The local details that tell one class from another.

  Ordered from the easiest to learn to the hardest: small datasets (few
  classes) use the first ones.
  """
  wing: str  # colour of the wing patch
  eye: str  # plain or ringed eye
  tail: str  # plain or barred tail
  beak: str  # beak length


_CHOICES = Species(
    wing=('red', 'yellow', 'blue', 'white'),
    eye=('plain', 'ringed'),
    tail=('plain', 'barred'),
    beak=('short', 'long'),
)
MAX_CLASSES = math.prod(len(choices) for choices in _CHOICES)

_WING_RGB = {
    'red': (0.85, 0.12, 0.10),
    'yellow': (0.95, 0.85, 0.15),
    'blue': (0.15, 0.35, 0.95),
    'white': (0.97, 0.97, 0.97),
}
# The source task's wing colours, none of them one of the above.
_SOURCE_STREAM = 1  # seeds the source task's images apart from the others'
_SOURCE_WING_RGB = {
    'green': (0.15, 0.70, 0.20),
    'orange': (0.95, 0.50, 0.10),
    'purple': (0.55, 0.15, 0.75),
    'black': (0.05, 0.05, 0.05),
}
SOURCE_CLASSES = len(_SOURCE_WING_RGB) * len(_CHOICES.eye) * len(_CHOICES.beak)
# Beak length beyond the head, in body lengths (the body's semi-major axis).
_BEAK_LENGTH = {'short': 0.2, 'long': 0.9}
# Centre and half extent of the bird's bounding box (rotations included), in
# its own frame (see below): keeps the whole bird in the image.
_CENTRE = (0.25, -0.15)
_HALF_WIDTH, _HALF_HEIGHT = 2.0, 1.5
# Image fraction the training crop may cut from each side (72 -> 64 crop).
_CROP_MARGIN = 0.11
# A bird's body length, in image widths: from min_scale (by default this) to MAX_SCALE.
DEFAULT_MIN_SCALE = 0.15
MAX_SCALE = 0.18


def species(label: int) -> Species:
  """Decodes a label into its details, the first detail varying fastest."""
  details = []
  for choices in _CHOICES:
    label, digit = divmod(label, len(choices))
    details.append(choices[digit])
  return Species(*details)



def source_details(label: int, rng: np.random.Generator) -> Species:
  """The details of a source image of class `label`: wing (varying fastest), eye and
  beak from the label, the tail drawn from `rng`."""
  label, wing = divmod(label, len(_SOURCE_WING_RGB))
  beak, eye = divmod(label, len(_CHOICES.eye))
  return Species(wing=tuple(_SOURCE_WING_RGB)[wing], eye=_CHOICES.eye[eye],
                 tail=str(rng.choice(_CHOICES.tail)), beak=_CHOICES.beak[beak])

def class_name(label: int) -> str:
  return f'species_{label:02d}'


@dataclasses.dataclass(eq=False, kw_only=True)
class SyntheticConfig(tfds.core.BuilderConfig):
  """Size and seed of the dataset; the name is derived from them.

  Datasets of different sizes prepared into one data_dir thus live in
  different directories.
  """
  name: str = dataclasses.field(init=False)
  num_classes: int = 10
  train_per_class: int = 60
  test_per_class: int = 20
  image_size: int = 72
  seed: int = 0
  source: bool = False  # the source task (see the module's docstring)
  # The smallest bird, in body lengths per image width (the largest: MAX_SCALE).
  min_scale: float = DEFAULT_MIN_SCALE
  occluders: int = 0  # up to this many leaves in front of each bird

  def __post_init__(self):
    most = SOURCE_CLASSES if self.source else MAX_CLASSES
    if not 2 <= self.num_classes <= most:
      raise UserError(
          f'config.synthetic.num_classes={self.num_classes} must be in '
          f'[2, {most}]: the synthetic dataset has {most} '
          f'{"source classes" if self.source else "species"}.')
    for field in ('train_per_class', 'test_per_class'):
      if getattr(self, field) < 1:
        raise UserError(f'config.synthetic.{field}={getattr(self, field)} '
                        'must be at least 1.')
    if self.image_size < 32:
      raise UserError(
          f'config.synthetic.image_size={self.image_size} must be at least 32 '
          'so that the local details stay several pixels across.')
    if not 0 < self.min_scale <= MAX_SCALE:
      raise UserError(f'config.synthetic.min_scale={self.min_scale} must be in '
                      f'(0, {MAX_SCALE}].')
    if self.occluders < 0:
      raise UserError(f'config.synthetic.occluders={self.occluders} must be at least 0.')
    # The knobs name the dataset only when set, so the default's name (and
    # every data directory prepared before them) stays.
    self.name = (f'c{self.num_classes}_train{self.train_per_class}'
                 f'_test{self.test_per_class}_px{self.image_size}'
                 f'_seed{self.seed}' + ('_source' if self.source else '')
                 + (f'_scale{self.min_scale:g}' if self.min_scale != DEFAULT_MIN_SCALE else '')
                 + (f'_occluders{self.occluders}' if self.occluders else ''))


class ClanSynthetic(tfds.core.GeneratorBasedBuilder):
  """Synthetic fine-grained birds: classes differ only in small local details."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  # The size of configs/default.py, so that tfds.builder('clan_synthetic')
  # works; any other size is a custom config (see `synthetic_builder`).
  BUILDER_CONFIGS = [SyntheticConfig()]

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    size = config.image_size
    names = [class_name(label) for label in range(config.num_classes)]
    if config.source:
      rng = np.random.default_rng(0)  # the tail: any, drawn per image
      legend = '\n'.join(
          f'{name}: ' + ', '.join(f'{value} {detail}' for detail, value in
                                  source_details(label, rng)._asdict().items()
                                  if detail != 'tail') + ', any tail'
          for label, name in enumerate(names))
    else:
      legend = '\n'.join(
          f'{name}: ' + ', '.join(f'{value} {detail}' for detail, value in
                                  species(label)._asdict().items())
          for label, name in enumerate(names))
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'{self.__doc__}\n\n{legend}',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(
                shape=(size, size, 3), encoding_format='png'),
            'label': tfds.features.ClassLabel(names=names),
            'id': tfds.features.Text(),
        }),
        supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Everything is generated here; nothing is downloaded.
    config = self.builder_config
    return {
        'train': self._generate_examples('train', config.train_per_class),
        'test': self._generate_examples('test', config.test_per_class),
    }

  def _generate_examples(self, split: str, per_class: int):
    config = self.builder_config
    for index in range(config.num_classes * per_class):
      yield example_id(split, index), {
          'image': render_example(config, split, index),
          'label': index % config.num_classes,
          'id': example_id(split, index),
      }


def example_id(split: str, index: int) -> str:
  """The id of example `index` of `split`. TFDS stores the examples in another order,
  shuffled by this id; `example_index` gives the index back."""
  return f'{split}_{index:05d}'


def example_index(example_id_: str) -> int:
  return int(example_id_.rsplit('_', 1)[1])


def render_example(config: SyntheticConfig, split: str, index: int,
                   details: Species | None = None) -> np.ndarray:
  """Example `index` of `split`: uint8 [S, S, 3].

  details: draw the same bird (pose, plumage, background, every random draw)
    with these details instead of its class's; the drawing's random draws do
    not depend on the details, so only the details change.
  """
  # Split names, not positions, keep the splits' images independent.
  split_seed = int.from_bytes(split.encode(), 'little')
  # The source task draws other images too, not the same birds recoloured.
  rng = np.random.default_rng(
      [config.seed, split_seed, index, *([_SOURCE_STREAM] if config.source else [])])
  label = index % config.num_classes
  own = source_details(label, rng) if config.source else species(label)
  return render_bird(details or own, rng, config.image_size, min_scale=config.min_scale,
                     occluders=config.occluders)


NAME = ClanSynthetic.name


def synthetic_builder(
    data_dir: str | None,
    *,
    num_classes: int,
    train_per_class: int,
    test_per_class: int,
    image_size: int,
    seed: int,
    source: bool = False,
    min_scale: float = DEFAULT_MIN_SCALE,
    occluders: int = 0,
) -> tfds.core.DatasetBuilder:
  """Returns the (possibly not yet prepared) builder of one dataset size.

  Args:
    data_dir: TFDS data directory; None for TFDS's default.
    num_classes: number of species, at most MAX_CLASSES.
    train_per_class: training images per class.
    test_per_class: test images per class.
    image_size: height and width of the square images, at least 32.
    seed: the same seed gives byte-identical images.
    source: the source task, disjoint from the species (see the module's docstring).
    min_scale: the smallest bird's body length, in image widths.
    occluders: up to this many leaves in front of each bird.
  """
  config = SyntheticConfig(
      num_classes=num_classes, train_per_class=train_per_class,
      test_per_class=test_per_class, image_size=image_size, seed=seed, source=source,
      min_scale=min_scale, occluders=occluders)
  # TFDS refuses a custom config named like a registered one: use the latter.
  config = ClanSynthetic.builder_configs.get(config.name, config)
  return ClanSynthetic(data_dir=data_dir, config=config)


# ----------------------------------------------------------------------------
# Rendering. Shapes are signed distance functions (negative inside) evaluated
# at every pixel centre, in the bird's own frame: u points from tail to beak,
# v points down, one unit is the body's semi-major axis. Their coverage is
# antialiased over one pixel, so the details stay crisp at small sizes.
# ----------------------------------------------------------------------------

Rgb = tuple[float, float, float] | np.ndarray


def render_bird(details: Species, rng: np.random.Generator, image_size: int, *,
                min_scale: float = DEFAULT_MIN_SCALE, occluders: int = 0) -> np.ndarray:
  """Draws one bird with the given details: uint8 [image_size, image_size, 3].

  min_scale: the smallest bird's body length, in image widths.
  occluders: up to this many leaves drawn in front of the bird.
  """
  ys, xs = np.mgrid[:image_size, :image_size] + 0.5
  canvas = _background(rng, xs / image_size, ys / image_size)

  scale = image_size * rng.uniform(min_scale, MAX_SCALE)  # pixels per body length
  lo = image_size * _CROP_MARGIN
  hi = image_size - lo
  cx = _uniform_or_middle(rng, lo + _HALF_WIDTH * scale,
                          hi - _HALF_WIDTH * scale)
  cy = _uniform_or_middle(rng, lo + _HALF_HEIGHT * scale,
                          hi - _HALF_HEIGHT * scale)
  angle = np.deg2rad(rng.uniform(-20, 20))
  _draw_branch(canvas, rng, xs - cx, ys - cy, scale, angle)

  cos, sin = np.cos(angle), np.sin(angle)
  facing = rng.choice([-1.0, 1.0])  # orientation carries no class information
  u = facing * ((xs - cx) * cos + (ys - cy) * sin) / scale + _CENTRE[0]
  v = (-(xs - cx) * sin + (ys - cy) * cos) / scale + _CENTRE[1]
  _draw_bird(canvas, details, rng, u, v, pixel=1.0 / scale)
  # Drawn only when asked for: with none, the random draws (and so the
  # images) are those of the task before this knob.
  if occluders:
    _draw_occluders(canvas, rng, xs - cx, ys - cy, scale, occluders)
  return _jitter_colours(canvas, rng)


def _uniform_or_middle(rng: np.random.Generator, lo: float, hi: float) -> float:
  return rng.uniform(lo, hi) if lo < hi else (lo + hi) / 2


def _background(rng: np.random.Generator, x: np.ndarray,
                y: np.ndarray) -> np.ndarray:
  """Smooth colour waves, leaves and pixel noise: float [H, W, 3] in 0..1.

  Args:
    rng: random generator.
    x: [H, W] pixel centres' x in 0..1.
    y: [H, W] pixel centres' y in 0..1.
  """
  base = np.array(colorsys.hsv_to_rgb(
      rng.uniform(0.0, 1.0), rng.uniform(0.15, 0.5), rng.uniform(0.45, 0.9)))
  canvas = np.broadcast_to(base, x.shape + (3,)).copy()
  for _ in range(3):
    freq_x, freq_y = rng.uniform(-6, 6, size=2)
    wave = np.sin(2 * np.pi * (freq_x * x + freq_y * y) + rng.uniform(0, 7))
    canvas += wave[..., None] * rng.uniform(-0.08, 0.08, size=3)
  pixel = 1.0 / x.shape[0]
  for _ in range(rng.integers(4, 9)):
    leaf_rgb = colorsys.hsv_to_rgb(rng.uniform(0.1, 0.4),
                                   rng.uniform(0.3, 0.8), rng.uniform(0.2, 0.7))
    sdf = _ellipse(x, y, centre=rng.uniform(0, 1, size=2),
                   radii=rng.uniform(0.03, 0.1, size=2),
                   angle=rng.uniform(0, np.pi))
    _paint(canvas, _coverage(sdf, pixel), leaf_rgb)
  canvas += rng.normal(0, 0.03, size=canvas.shape)
  return canvas


def _draw_branch(canvas: np.ndarray, rng: np.random.Generator, dx: np.ndarray,
                 dy: np.ndarray, scale: float, angle: float) -> None:
  """A branch across the image under the bird's body, roughly level with it."""
  tilt = angle + np.deg2rad(rng.uniform(-15, 15))
  # Distance below the centre of the bird's bounding box, across the branch.
  below = -dx * np.sin(tilt) + dy * np.cos(tilt)
  half_thickness = rng.uniform(0.12, 0.25)
  sdf = np.abs(below / scale - 0.6 - half_thickness) - half_thickness
  rgb = colorsys.hsv_to_rgb(rng.uniform(0.05, 0.12), rng.uniform(0.3, 0.7),
                            rng.uniform(0.2, 0.5))
  _paint(canvas, _coverage(sdf, 1.0 / scale), rgb)


def _draw_bird(canvas: np.ndarray, details: Species, rng: np.random.Generator,
               u: np.ndarray, v: np.ndarray, pixel: float) -> None:
  """Paints the bird, back to front, in the frame (u, v) of [H, W] arrays."""
  body_rgb = np.array(colorsys.hsv_to_rgb(
      rng.uniform(0, 1), rng.uniform(0.1, 0.35), rng.uniform(0.3, 0.65)))

  def paint(sdf: np.ndarray, rgb: Rgb) -> None:
    _paint(canvas, _coverage(sdf, pixel), rgb)

  tail_root, tail_tip = np.array([-0.6, 0.0]), np.array([-1.7, -0.3])
  tail = _polygon(u, v, [(-0.6, -0.22), (-1.65, -0.58), (-1.75, -0.06),
                         (-0.6, 0.22)])
  paint(tail, body_rgb * rng.uniform(0.6, 0.9))
  if details.tail == 'barred':
    # Distance along the tail's axis, cut into bars across it.
    axis = (tail_tip - tail_root) / np.linalg.norm(tail_tip - tail_root)
    along = (u - tail_root[0]) * axis[0] + (v - tail_root[1]) * axis[1]
    period = 0.5
    bars = np.abs(np.mod(along / period, 1.0) - 0.5) * period - period / 4
    paint(np.maximum(tail, bars), (0.95, 0.95, 0.9))

  paint(_ellipse(u, v, centre=(0.0, 0.0), radii=(1.0, 0.62)), body_rgb)
  wing_rgb = np.array({**_WING_RGB, **_SOURCE_WING_RGB}[details.wing]) + rng.uniform(
      -0.05, 0.05, 3)
  paint(_ellipse(u, v, centre=(-0.15, -0.05), radii=(0.55, 0.3),
                 angle=np.deg2rad(-10)), wing_rgb)
  paint(_ellipse(u, v, centre=(0.92, -0.48), radii=(0.42, 0.42)),
        body_rgb * rng.uniform(0.85, 1.15))

  beak_tip = 1.34 + _BEAK_LENGTH[details.beak]
  paint(_polygon(u, v, [(1.2, -0.64), (beak_tip, -0.48), (1.2, -0.32)]),
        rng.uniform(0.0, 0.2, size=3))

  eye = (1.02, -0.58)
  if details.eye == 'ringed':
    paint(_ellipse(u, v, centre=eye, radii=(0.28, 0.28)), (0.97, 0.97, 0.97))
  paint(_ellipse(u, v, centre=eye, radii=(0.1, 0.1)), (0.02, 0.02, 0.02))


def _draw_occluders(canvas: np.ndarray, rng: np.random.Generator, dx: np.ndarray,
                    dy: np.ndarray, scale: float, most: int) -> None:
  """0 to `most` leaves in front of the bird, each centred within its bounding box.

  Args:
    canvas: [H, W, 3], painted in place.
    rng: random generator.
    dx, dy: [H, W] pixel offsets from the centre of the bird's bounding box.
    scale: pixels per body length.
    most: the most leaves.
  """
  for _ in range(rng.integers(0, most + 1)):
    centre = rng.uniform(-1, 1, size=2) * np.array([_HALF_WIDTH, _HALF_HEIGHT]) * scale
    radii = rng.uniform(0.15, 0.45, size=2) * scale
    rgb = colorsys.hsv_to_rgb(rng.uniform(0.1, 0.4), rng.uniform(0.3, 0.8),
                              rng.uniform(0.2, 0.7))
    sdf = _ellipse(dx, dy, centre=centre, radii=radii, angle=rng.uniform(0, np.pi))
    _paint(canvas, _coverage(sdf, 1.0), rgb)


def _jitter_colours(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Global brightness, contrast and white balance: uint8 [H, W, 3]."""
  mean = canvas.mean()
  canvas = (canvas - mean) * rng.uniform(0.8, 1.2) + mean
  canvas *= rng.uniform(0.8, 1.2) * rng.uniform(0.92, 1.08, size=3)
  return np.round(np.clip(canvas, 0, 1) * 255).astype(np.uint8)


def _coverage(sdf: np.ndarray, pixel: float) -> np.ndarray:
  """Fraction of each pixel inside a shape, from its signed distance."""
  return np.clip(0.5 - sdf / pixel, 0.0, 1.0)


def _paint(canvas: np.ndarray, alpha: np.ndarray, rgb: Rgb) -> None:
  """Alpha-blends a flat colour onto canvas [H, W, 3] in place."""
  canvas += alpha[..., None] * (np.asarray(rgb) - canvas)


def _ellipse(u: np.ndarray, v: np.ndarray, *, centre, radii,
             angle: float = 0.0) -> np.ndarray:
  """Approximate signed distance to an ellipse (exact for circles)."""
  du, dv = u - centre[0], v - centre[1]
  cos, sin = np.cos(angle), np.sin(angle)
  a = (du * cos + dv * sin) / radii[0]
  b = (-du * sin + dv * cos) / radii[1]
  return (np.sqrt(a * a + b * b) - 1.0) * min(radii)


def _polygon(u: np.ndarray, v: np.ndarray, vertices) -> np.ndarray:
  """Signed distance to a convex polygon (exact inside, a bound outside)."""
  vertices = np.asarray(vertices, dtype=np.float64)
  centroid = vertices.mean(axis=0)
  sdf = np.full(u.shape, -np.inf)
  for start, end in zip(vertices, np.roll(vertices, -1, axis=0)):
    normal = np.array([end[1] - start[1], start[0] - end[0]])
    normal /= np.linalg.norm(normal)
    if np.dot(centroid - start, normal) > 0:  # make it point outwards
      normal = -normal
    sdf = np.maximum(sdf, (u - start[0]) * normal[0] + (v - start[1]) * normal[1])
  return sdf
