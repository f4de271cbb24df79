"""Heat maps as images, with numpy and PIL only.

A colormap and alpha blending, and the titles, colour bars and layout that make
a picture read without a caption.
"""
from collections.abc import Sequence
import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Viridis at 9 evenly spaced points (matplotlib's values, rounded): dark blue
# for low, yellow for high, readable in greyscale and by colour-blind readers.
_VIRIDIS = np.array([
    (68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
    (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37)], np.float32)


def colorize(values: np.ndarray) -> np.ndarray:
  """Values in [0, 1] (clipped), any shape [...] -> uint8 RGB [..., 3], viridis."""
  position = np.clip(np.asarray(values, np.float32), 0.0, 1.0) * (len(_VIRIDIS) - 1)
  low = np.minimum(np.floor(position).astype(np.int32), len(_VIRIDIS) - 2)
  weight = (position - low)[..., None]
  rgb = (1 - weight) * _VIRIDIS[low] + weight * _VIRIDIS[low + 1]
  return np.round(rgb).astype(np.uint8)


def rescale(values: np.ndarray) -> np.ndarray:
  """Min-max scaling to [0, 1], so that a map's range fills the colormap.

  A constant map becomes zeros.
  """
  values = np.asarray(values, np.float32)
  low, high = float(values.min()), float(values.max())
  return (values - low) / (high - low) if high > low else np.zeros_like(values)


def blend(image: np.ndarray, heat: np.ndarray, mask: np.ndarray, *,
          alpha: float = 0.5, outside: float = 0.4) -> np.ndarray:
  """Overlays a heat map on an image.

  Args:
    image: uint8 RGB [H, W, 3].
    heat: [H, W] in [0, 1].
    mask: bool [H, W], where the heat map is defined.
    alpha: opacity of the colormap where `mask`.
    outside: brightness of the image where not `mask`, which is dimmed.

  Returns:
    uint8 RGB [H, W, 3].
  """
  image = image.astype(np.float32)
  overlay = (1 - alpha) * image + alpha * colorize(heat)
  out = np.where(mask[..., None], overlay, outside * image)
  return np.round(out).astype(np.uint8)


# Text and spacing of labelled pictures, in pixels.
_PAD = 3  # around text, and between a picture and its colour bar
_BAR_WIDTH = 10
_BACKGROUND = (255, 255, 255)
_INK = (0, 0, 0)


# Of the text, in pixels, where Pillow can scale its font.
_FONT_SIZE = 12


@functools.cache
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
  # Pillow's own font: no font file to find, so the same pictures wherever the
  # same Pillow runs.
  try:
    return ImageFont.load_default(size=_FONT_SIZE)
  except TypeError:  # Pillow < 10.1: only its fixed bitmap font
    return ImageFont.load_default()


@functools.cache
def _line_height() -> int:
  # Of the tallest glyphs, so that every line of text takes the same room.
  return int(np.ceil(_font().getbbox('Mgjy(|')[3]))


def _text_width(text: str) -> int:
  return int(np.ceil(_font().getbbox(text)[2]))


def _canvas(height: int, width: int) -> np.ndarray:
  return np.full((height, width, 3), _BACKGROUND, np.uint8)


def _write(canvas: np.ndarray, lines: Sequence[tuple[tuple[int, int], str]]) -> np.ndarray:
  """Draws each ((x, y), text), its line's top at y, on a copy of `canvas` [H, W, 3]."""
  image = Image.fromarray(canvas)
  draw = ImageDraw.Draw(image)
  for xy, text in lines:
    draw.text(xy, text, fill=_INK, font=_font())
  return np.asarray(image)


def title_strip(title: str, width: int) -> np.ndarray:
  """One line of text on white: uint8 RGB [h, max(width, the text's width), 3]."""
  strip = _canvas(_line_height() + 2 * _PAD, max(width, _text_width(title) + 2 * _PAD))
  return _write(strip, [((_PAD, _PAD), title)])


def scale_labels(low: float, high: float) -> tuple[str, str]:
  """The values that a colour bar's ends stand for, as text.

  Three significant digits, or more (up to 6) where fewer would print two
  different values alike.
  """
  for digits in range(3, 7):
    labels = f'{low:.{digits}g}', f'{high:.{digits}g}'
    if labels[0] != labels[1] or low == high:
      break
  return labels


def colorbar(height: int, low: float, high: float) -> np.ndarray:
  """A vertical viridis bar, labelled with the values its ends stand for.

  Args:
    height: of the bar, in pixels (that of the picture beside it).
    low: the value of the colormap's low end (dark blue), written at the
      bar's bottom.
    high: that of its high end (yellow), written at its top.

  Returns:
    uint8 RGB [max(height, two lines of text), W, 3] on white: rows 0 to
    height - 1 of columns _PAD to _PAD + _BAR_WIDTH run linearly from
    colorize(1) down to colorize(0); the labels are to their right.
  """
  low_label, high_label = scale_labels(low, high)
  text_x = 2 * _PAD + _BAR_WIDTH
  width = text_x + max(_text_width(low_label), _text_width(high_label)) + _PAD
  bar_height = max(height, 2 * _line_height() + 1)
  canvas = _canvas(bar_height, width)
  canvas[:height, _PAD:_PAD + _BAR_WIDTH] = colorize(np.linspace(1, 0, height))[:, None]
  return _write(canvas, [((text_x, 0), high_label),
                         ((text_x, bar_height - _line_height()), low_label)])


def labelled(picture: np.ndarray, title: str,
             scale: tuple[float, float] | None = None) -> np.ndarray:
  """A picture under its title, with a colour bar to its right if `scale`.

  Args:
    picture: uint8 RGB [H, W, 3].
    title: one line of text, written above the picture.
    scale: (low, high), the values that the colormap's ends stand for in the
      picture (those of `colorbar`); None for no bar.

  Returns:
    uint8 RGB [T + H', W', 3] on white: the title strip in rows 0 to T - 1,
    the picture at rows T to T + H - 1 and columns 0 to W - 1, the colour bar
    from column W; H' >= H and W' >= W make room for the bar and title.
  """
  body = picture if scale is None else row([picture, colorbar(picture.shape[0], *scale)])
  return column([title_strip(title, body.shape[1]), body])


def row(pictures: Sequence[np.ndarray], gap: int = 0) -> np.ndarray:
  """uint8 RGB [H_i, W_i, 3] pictures left to right, top-aligned, `gap` apart, on white."""
  height = max(picture.shape[0] for picture in pictures)
  width = sum(picture.shape[1] for picture in pictures) + gap * (len(pictures) - 1)
  canvas = _canvas(height, width)
  left = 0
  for picture in pictures:
    canvas[:picture.shape[0], left:left + picture.shape[1]] = picture
    left += picture.shape[1] + gap
  return canvas


def column(pictures: Sequence[np.ndarray], gap: int = 0) -> np.ndarray:
  """uint8 RGB [H_i, W_i, 3] pictures top to bottom, left-aligned, `gap` apart, on white."""
  width = max(picture.shape[1] for picture in pictures)
  height = sum(picture.shape[0] for picture in pictures) + gap * (len(pictures) - 1)
  canvas = _canvas(height, width)
  top = 0
  for picture in pictures:
    canvas[top:top + picture.shape[0], :picture.shape[1]] = picture
    top += picture.shape[0] + gap
  return canvas
