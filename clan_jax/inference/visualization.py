"""Heat maps as images: a colormap and alpha blending, with numpy and PIL only."""
import numpy as np

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
