"""Attention maps of a trained CLAN on images, overlaid on them, for notebooks and `predict`.

One map per block that draws one (its BlockSpec.attention_map) and mid-level
tap (e.g. 'layer2', stride 8, and 'layer3', stride 16). The paper's blocks:

- CLSA: the spatial attention M_s = sigmoid(conv([max_c, mean_c] L̂_s)) that
  re-weights the top-level map (sown by CLSA as intermediates/attention).
- CLCA: for one query position, its row of normalize(W_θ(f) W_φ(f)^T), the
  weights with which that position gathers the value map (computed from the
  query and key maps that CLCA sows, with CLCA's own normalisation).

All live on the mid-level grid [H_s, W_s] of the model's input, the centre
crop of the resized image. Overlays put them back on the whole image: upsampled
bilinearly onto the part of the image the crop covers, which is coloured; the
rest of the image, which the model does not see, is dimmed. Labelled overlays
(what `save` and `panel` draw) add a title, block, tap and query point, and a
colour bar from the map's lowest to its highest value.

  trained = trained_model.load('workdirs/default')
  image = input_pipeline.read_image('bird.png')          # uint8 [H, W, 3]
  (maps,) = attention_maps.compute(trained, [image], query_points=[(60, 40)])
  maps.blocks['clsa']['layer2'], maps.blocks['clca']['layer2']  # float32 [H_s, W_s]
  pictures = attention_maps.overlays(maps)               # {'clsa_layer2': uint8 [H, W, 3], ...}
  attention_maps.titles(maps)              # {'clca_layer2': 'CLCA · layer2 · query (60, 40)', ...}
  attention_maps.labelled_overlays(maps)   # {'clsa_layer2': uint8 [H', W', 3], ...}
  attention_maps.panel(maps)               # uint8 [H', W'', 3]: the image and all its pictures
  attention_maps.save(maps, '/tmp/attention', 'bird')    # one labelled PNG per picture
"""
from collections.abc import Sequence
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

from clan_jax import storage
from clan_jax.data import input_pipeline
from clan_jax.inference import visualization
from clan_jax.models import blocks
from clan_jax.user_errors import UserError
from clan_jax.workdir import trained_model

Point = tuple[float, float]

# Pixels between the pictures of a panel, and between its rows.
_PANEL_GAP = 6


@dataclasses.dataclass(frozen=True)
class AttentionMaps:
  """The attention maps of one image.

  Attributes:
    image: uint8 RGB [H, W, 3], the image as given (before resize and crop).
    crop_box: (left, top, right, bottom) in image pixels, the part of the image
      that the model sees (the evaluation crop).
    query_point: (x, y) in image pixels, the query of maps that have one
      (CLCA's).
    blocks: {block name: {tap: its map, float32 [H_s, W_s]}}, for the blocks
      the model uses that draw maps. CLSA's is M_s, in (0, 1); CLCA's the
      query position's affinity over all positions (sums to 1 with softmax
      normalisation).
    query_cells: {block name: {tap: (row, column) of the query on the
      [H_s, W_s] grid}}, for the blocks whose maps have a query.
  """
  image: np.ndarray
  crop_box: tuple[float, float, float, float]
  query_point: Point
  blocks: dict[str, dict[str, np.ndarray]]
  query_cells: dict[str, dict[str, tuple[int, int]]]


def compute(trained: trained_model.TrainedModel, images: Sequence[np.ndarray],
            query_points: Sequence[Point | None] | None = None) -> list[AttentionMaps]:
  """The attention maps of `images` under `trained`, in one batch.

  Args:
    trained: a loaded workdir (`trained_model.load`).
    images: uint8 RGB [H, W, 3] each, of any sizes; preprocessed exactly as
      evaluation does (`input_pipeline.preprocess_for_eval`).
    query_points: the query of each image (of maps that have one, as
      CLCA's), (x, y) in its pixels; None (or a None entry) for the centre of
      the image.

  Returns:
    One AttentionMaps per image.

  Raises:
    ValueError: the model uses no block that draws maps, an image is not uint8
      RGB, or a query point lies outside the part of the image the model sees.
  """
  config = trained.config
  drawn = _drawing_blocks(config.model)
  if not drawn:
    raise UserError('This model uses no block that draws attention maps '
                    '(config.model.use_mid_block, config.model.use_top_block), so it has none.')
  images = [np.asarray(image) for image in images]
  for image in images:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f'Images must be uint8 RGB [H, W, 3]; got {image.dtype} '
                       f'{image.shape}.')
  if query_points is None:
    query_points = [None] * len(images)
  query_points = [(image.shape[1] / 2, image.shape[0] / 2) if point is None else point
                  for image, point in zip(images, query_points, strict=True)]
  crop_boxes = [input_pipeline.eval_crop_box(*image.shape[:2], config) for image in images]
  # Query points as fractions of the crop, from 0 to 1 along x and y.
  fractions = [_fraction_in_box(point, box, image.shape[:2])
               for image, point, box in zip(images, query_points, crop_boxes)]

  batch = np.stack([np.asarray(input_pipeline.preprocess_for_eval(image, config))
                    for image in images])
  intermediates = jax.device_get(_intermediates(trained.model, trained.variables, batch))
  maps = {}
  cells = {}
  for name in drawn:
    for tap in config.model.mid_level_taps:
      # What a block sows is what its maps are made of; one that sowed
      # nothing here has no map.
      sown = intermediates.get(f'{name}_{tap}')
      if sown:
        grids, tap_cells = blocks.registered()[name].attention_map(
            sown, config.model[name], fractions)
        maps.setdefault(name, {})[tap] = grids
        if tap_cells is not None:
          cells.setdefault(name, {})[tap] = tap_cells
  return [AttentionMaps(
      image=image, crop_box=box, query_point=tuple(point),
      blocks={name: {tap: grids[i] for tap, grids in block_maps.items()}
              for name, block_maps in maps.items()},
      query_cells={name: {tap: tap_cells[i] for tap, tap_cells in block_cells.items()}
                   for name, block_cells in cells.items()})
          for i, (image, box, point) in enumerate(zip(images, crop_boxes, query_points))]


def _drawing_blocks(model_config) -> list[str]:
  """The blocks the model uses that draw maps, top-level first."""
  used = ([model_config.top_block] if model_config.use_top_block else []) + (
      [model_config.mid_block] if model_config.use_mid_block else [])
  return [name for name in used if blocks.registered()[name].attention_map is not None]


def _intermediates(model: nn.Module, variables: dict[str, Any], images: np.ndarray):
  """Everything the model sows for images [B, S, S, 3]: {module: {name: (value,)}}."""
  @jax.jit
  def forward(variables, images):
    _, state = model.apply(variables, images, train=False, mutable=['intermediates'])
    return state['intermediates']
  return forward(variables, images)


def _fraction_in_box(point: Point, box: tuple[float, float, float, float],
                     shape: tuple[int, int]) -> Point:
  """(x, y) in image pixels -> fractions of the crop box, each in [0, 1)."""
  x, y = point
  left, top, right, bottom = box
  if not (left <= x < right and top <= y < bottom):
    raise ValueError(
        f'Query point (x, y) = ({x:g}, {y:g}) is outside the part of the '
        f'{shape[1]}x{shape[0]} image that the model sees, the centre crop (left, top, '
        f'right, bottom) = ({left:.1f}, {top:.1f}, {right:.1f}, {bottom:.1f}); choose '
        'a point inside it (--query_point).')
  return (x - left) / (right - left), (y - top) / (bottom - top)


def overlays(maps: AttentionMaps, *, alpha: float = 0.5) -> dict[str, np.ndarray]:
  """Each map over the image: {'<block>_<tap>', e.g. 'clsa_layer2': uint8 RGB [H, W, 3]}.

  Each map is min-max scaled to the full colormap (viridis: dark blue for its
  lowest value, yellow for its highest), upsampled bilinearly onto the crop
  box and alpha-blended; the pictures of maps with a query mark its point.
  These are bare, each the size of the image; `labelled_overlays` names them
  and adds colour bars.
  """
  pictures = {}
  for name, tap_maps in maps.blocks.items():
    for tap, grid in tap_maps.items():
      heat, mask = _onto_image(visualization.rescale(grid), maps.crop_box,
                               maps.image.shape[:2])
      picture = visualization.blend(maps.image, heat, mask, alpha=alpha)
      if tap in maps.query_cells.get(name, {}):
        picture = _mark(picture, maps.query_point)
      pictures[f'{name}_{tap}'] = picture
  return pictures


def titles(maps: AttentionMaps) -> dict[str, str]:
  """The title of each picture of `overlays`, keyed alike.

  E.g. {'clsa_layer2': 'CLSA M_s · layer2', 'clca_layer3': 'CLCA · layer3 ·
  query (60, 40)'}: the block (its map), the tap and, for maps with a query,
  its (x, y) in image pixels.
  """
  out = {}
  for name, tap_maps in maps.blocks.items():
    for tap in tap_maps:
      parts = [blocks.registered()[name].map_title or name.upper(), tap]
      if tap in maps.query_cells.get(name, {}):
        x, y = (f'{round(v, 1):g}' for v in maps.query_point)
        parts.append(f'query ({x}, {y})')
      out[f'{name}_{tap}'] = ' · '.join(parts)
  return out


def labelled_overlays(maps: AttentionMaps, *, alpha: float = 0.5) -> dict[str, np.ndarray]:
  """Each picture of `overlays` under its title (`titles`), beside its colour bar.

  The bar runs from the map's lowest value (bottom, dark blue) to its highest
  (top, yellow), the two ends of the min-max scaled colormap, labelled with
  these values.

  Returns:
    {'<block>_<tap>': uint8 RGB [T + H', W', 3]} (`visualization.labelled`):
    the title strip in rows 0 to T - 1, the overlay [H, W, 3] below it at
    columns 0 to W - 1, the colour bar to its right (H' >= H, W' > W).
  """
  names = titles(maps)
  pictures = overlays(maps, alpha=alpha)
  return {key: visualization.labelled(pictures[key], names[key],
                                      (float(grid.min()), float(grid.max())))
          for key, grid in _keyed(maps).items()}


def _keyed(maps: AttentionMaps) -> dict[str, np.ndarray]:
  """{'<block>_<tap>': its map}, in the order of `maps.blocks`."""
  return {f'{name}_{tap}': grid for name, tap_maps in maps.blocks.items()
          for tap, grid in tap_maps.items()}


def panel(maps: AttentionMaps | Sequence[AttentionMaps], *, alpha: float = 0.5
          ) -> np.ndarray:
  """One row per image: the image (titled 'image'), then its labelled overlays.

  Args:
    maps: those of one image, or of several, one row each, top to bottom.
    alpha: opacity of the colormap (`overlays`).

  Returns:
    uint8 RGB [rows' heights + gaps, the widest row's width, 3] on white; the
    pictures of a row are top-aligned, in the order of `overlays`.
  """
  rows = [visualization.row(
      [visualization.labelled(image_maps.image, 'image'),
       *labelled_overlays(image_maps, alpha=alpha).values()], gap=_PANEL_GAP)
          for image_maps in ([maps] if isinstance(maps, AttentionMaps) else maps)]
  return visualization.column(rows, gap=_PANEL_GAP)


def save(maps: AttentionMaps, out_dir: str, stem: str, *, alpha: float = 0.5
         ) -> list[str]:
  """Writes each labelled overlay as `out_dir/<stem>_<block>_<tap>.png`; returns the paths."""
  directory = storage.path(out_dir)
  directory.mkdir(parents=True, exist_ok=True)
  paths = []
  for name, picture in labelled_overlays(maps, alpha=alpha).items():
    paths.append(str(directory / f'{stem}_{name}.png'))
    storage.write_image(Image.fromarray(picture), paths[-1])
  return paths


def _onto_image(grid: np.ndarray, box: tuple[float, float, float, float],
                shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  """A [h, w] grid spread over `box` of an image of `shape` (bilinear).

  Returns:
    (values [H, W], where the box covers pixel centres: bool [H, W]).
  """
  left, top, right, bottom = box
  height, width = shape
  # Grid cell edges 0..h map linearly onto top..bottom (and likewise for x);
  # next to the box's edges, the nearest cells' values extend to it.
  heat = jax.image.scale_and_translate(
      jnp.asarray(grid, jnp.float32), (height, width), (0, 1),
      scale=jnp.array([(bottom - top) / grid.shape[0], (right - left) / grid.shape[1]]),
      translation=jnp.array([top, left]), method='linear', antialias=False)
  ys, xs = np.mgrid[:height, :width] + 0.5
  mask = (xs >= left) & (xs < right) & (ys >= top) & (ys < bottom)
  return np.where(mask, np.asarray(heat), 0.0), mask


def _mark(picture: np.ndarray, point: Point) -> np.ndarray:
  """Draws a ring around `point` (x, y): white on black, visible on any colour."""
  image = Image.fromarray(picture)
  draw = ImageDraw.Draw(image)
  radius = max(3, min(picture.shape[:2]) // 40)
  x, y = point
  for width, colour, r in ((3, (0, 0, 0), radius + 1), (1, (255, 255, 255), radius)):
    draw.ellipse((x - r, y - r, x + r, y + r), outline=colour, width=width)
  return np.asarray(image)
