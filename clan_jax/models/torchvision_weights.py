"""Pretrained initialisation: torchvision / timm backbone weights, or a trained workdir.

A torchvision or timm state dict of a registered backbone (ResNet-18 ... 152,
VGG-11 ... 19 with or without BatchNorm; `.safetensors`, read without
PyTorch, or `.pth`, read with `torch.load(weights_only=True)`) converts to the
backbone's variables. The Flax trees mirror torchvision's keys (see
models/resnet.py and models/vgg.py), so the mapping is a rename plus a layout
change, with each family's renames in its `TorchvisionLayout`
(models/backbones.py):

  conv1.weight [O, I, H, W]              -> params/conv1/kernel [H, W, I, O]
  bn1.weight, bn1.bias                   -> params/bn1/scale, params/bn1/bias
  bn1.running_mean, bn1.running_var      -> batch_stats/bn1/mean, batch_stats/bn1/var
  layer1.0.downsample.0 / .1             -> layer1/0/downsample_conv / downsample_bn
  fc.weight [K, C], fc.bias              -> params/fc/kernel [C, K], params/fc/bias
  features.0.weight, features.1.weight   -> params/features/0/kernel, params/features/1/scale
  classifier.0.weight [F, C*7*7]         -> params/classifier/0/kernel [7*7*C, F] (NHWC order)

The classifier (`fc`, VGG's `classifier`) is kept for parity checks; CLAN's
backbone has none and ignores it. Converted weights are saved as a flat `.npz`
(these keys, plus `variant`).

`clan_jax.training.initialization` puts them into a train state.
"""
import dataclasses
import io
import pickle
import zipfile
from typing import Any

from etils import epath
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from clan_jax import storage
from clan_jax.models import backbones
from clan_jax.user_errors import MissingFileError, UserError

VARIANT_KEY = 'variant'
_TORCH_SUFFIXES = ('.pth', '.pt', '.bin')
# A timm / torchvision checkpoint may wrap its state dict in a training record.
_WRAPPER_KEYS = ('state_dict', 'model')
_BN_LEAVES = {'weight': 'params/{}/scale', 'bias': 'params/{}/bias',
              'running_mean': 'batch_stats/{}/mean', 'running_var': 'batch_stats/{}/var'}


@dataclasses.dataclass(frozen=True)
class BackboneWeights:
  """A converted backbone: `variant` (e.g. 'resnet50') and its arrays by flat key.

  `arrays` maps 'params/layer1/0/conv1/kernel', 'batch_stats/bn1/mean', ... to
  float32 numpy arrays in Flax layout; the classifier's ('params/fc/...',
  'params/classifier/...') are present when the file had one.
  """

  variant: str
  arrays: dict[str, np.ndarray]

  @property
  def spec(self) -> backbones.BackboneSpec:
    return backbones.BACKBONES[self.variant]

  @property
  def options(self) -> dict[str, Any]:
    """Keyword arguments of `spec.create` that the arrays fix (width, num_classes, ...)."""
    return self.spec.torchvision.options(self.arrays)

  @property
  def width(self) -> int:
    return self.options['width']

  @property
  def num_classes(self) -> int | None:
    return self.options['num_classes']

  def create_model(self, **kwargs) -> Any:
    """The backbone module these weights fit (with their classifier, if any)."""
    return self.spec.create(**self.options, **kwargs)

  def variables(self) -> dict[str, Any]:
    """Nested {'params', 'batch_stats'} for `create_model()`."""
    return traverse_util.unflatten_dict(self.arrays, sep='/')


class WeightsMismatchError(UserError):
  """Weights whose keys or shapes do not fit the model they are loaded into."""


# --- Reading state dicts -------------------------------------------------------------


def _read_torch(path: str, data: bytes) -> Any:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f'Reading {path} needs PyTorch: `pip install torch` (the CPU build is '
        'enough), or use the checkpoint as a .safetensors file, which needs no '
        'PyTorch.') from e
  try:
    # weights_only: tensors and plain containers only, so a malicious pickle
    # cannot run code.
    return torch.load(io.BytesIO(data), map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    # PyTorch's message surrounds its reason with advice, including
    # weights_only=False, which this never does: keep the reason alone.
    boilerplate = ('Weights only load failed', 'Please file an issue', 'Check the documentation')
    reason = next((line.strip() for line in str(e).splitlines()
                   if line.strip() and not line.strip().startswith(boilerplate)), str(e))
    if reason.startswith(('Unsupported operand', 'invalid load key')):
      # Bytes that are no pickle at all: a damaged file or another format.
      raise UserError(f'{path} is not a PyTorch checkpoint that can be read '
                      f'({type(e).__name__}: {reason}).') from e
    raise UserError(
        f'{path} holds pickled Python objects other than tensors, so it was not '
        'loaded: unpickling them could run arbitrary code (torch.load with '
        'weights_only=True refused it). Save the bare state dict '
        '(torch.save(model.state_dict(), ...)) or a .safetensors file from a '
        f'trusted environment. PyTorch: {reason}') from e
  except (RuntimeError, EOFError, OSError) as e:  # a damaged or truncated archive
    raise UserError(f'{path} is not a PyTorch checkpoint that can be read '
                    f'({_first_line(e)}).') from e


def _existing(path: str) -> epath.Path:
  """A weights file, local or on cloud storage.

  Raises:
    MissingFileError: there is none at `path`.
  """
  file = storage.path(path)
  if not file.exists():
    raise MissingFileError(f'Pretrained weights file {path} not found.')
  return file


def _first_line(error: Exception) -> str:
  return f'{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ""}'


def _to_numpy(value: Any) -> np.ndarray | None:
  if isinstance(value, np.ndarray):
    return value
  if hasattr(value, 'detach'):  # a torch.Tensor
    value = value.detach().cpu()
    return (value.float() if value.is_floating_point() else value).numpy()
  return None


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """A torchvision / timm state dict from `.safetensors` or `.pth`, as numpy arrays.

  Unwraps {'state_dict': ...} and {'model': ...}; keys are left as they are.
  """
  if path.endswith('.safetensors'):
    from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
    import safetensors  # pylint: disable=g-import-not-at-top
    file = _existing(path)
    try:
      # From a file: safetensors' reader of bytes knows no bfloat16.
      with storage.local_copy(file) as local:
        loaded = safetensors_numpy.load_file(local)
    except (safetensors.SafetensorError, OSError, ValueError) as e:
      raise UserError(f'{path} is not a .safetensors file that can be read '
                      f'({_first_line(e)}).') from e
  elif path.endswith(_TORCH_SUFFIXES):
    loaded = _read_torch(path, _existing(path).read_bytes())
  else:
    raise UserError(f'{path}: expected a .safetensors, .npz or {"/".join(_TORCH_SUFFIXES)} '
                    'file.')
  for wrapper in _WRAPPER_KEYS:
    if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
      loaded = loaded[wrapper]
  if not isinstance(loaded, dict):
    raise UserError(f'{path} holds a {type(loaded).__name__}, not a state dict.')
  state_dict, not_arrays = {}, []
  for key, value in loaded.items():
    array = _to_numpy(value)
    if array is None:
      not_arrays.append(key)
    else:
      state_dict[key] = array
  if not_arrays:
    raise UserError(f'{path}: these entries are not tensors: {sorted(not_arrays)}.')
  return state_dict


# --- Conversion ----------------------------------------------------------------------


def _flax_key(torch_key: str, ndim: int, layout: backbones.TorchvisionLayout) -> str | None:
  """'layer1.0.downsample.1.running_var' -> 'batch_stats/layer1/0/downsample_bn/var'.

  None for a key that is no parameter of a torchvision model of `layout`.
  """
  *modules, leaf = torch_key.split('.')
  module = '/'.join(layout.module_path(modules))
  if leaf == 'weight' and ndim in (2, 4):  # conv or linear
    return f'params/{module}/kernel'
  if leaf in _BN_LEAVES and ndim == 1:  # BatchNorm, or a conv's or linear's bias
    return _BN_LEAVES[leaf].format(module)
  return None


def _to_flax_layout(key: str, value: np.ndarray, layout: backbones.TorchvisionLayout
                    ) -> np.ndarray:
  value = np.asarray(value, np.float32)
  if layout.to_flax is not None:
    value = layout.to_flax(key, value)
  if value.ndim == 4:
    value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  elif value.ndim == 2:
    value = value.T  # [out, in] -> [in, out]
  return np.ascontiguousarray(value)


def _layout_of(torch_keys: list[str], variant: str | None, source: str
               ) -> backbones.TorchvisionLayout:
  """The layout of `variant`, or of the one family whose keys these are."""
  if variant is not None:
    if variant not in backbones.BACKBONES:
      raise ValueError(f'Unknown variant {variant!r}; expected one of '
                       f'{tuple(backbones.BACKBONES)}.')
    if backbones.BACKBONES[variant].torchvision is None:
      raise WeightsMismatchError(f'{variant} has no torchvision weights to convert.')
    return backbones.BACKBONES[variant].torchvision
  layouts = {spec.torchvision.family: spec.torchvision
             for spec in backbones.BACKBONES.values() if spec.torchvision is not None}
  for layout in layouts.values():
    if layout.owns(torch_keys):
      return layout
  raise WeightsMismatchError(
      f'{source} is no torchvision state dict of {" or ".join(layouts)} (its keys '
      f'begin {sorted(torch_keys)[:3]}).')


def _flatten(tree: Any) -> dict[str, Any]:
  return traverse_util.flatten_dict(tree, sep='/')


def check_arrays(arrays: dict[str, Any], expected: dict[str, Any], source: str,
                 target: str) -> None:
  """Raises WeightsMismatchError listing every missing, unexpected and mis-shaped key.

  Args:
    arrays: flat key -> array (anything with .shape) read from `source`.
    expected: flat key -> array or ShapeDtypeStruct of the model (`target`).
  """
  missing = sorted(set(expected) - set(arrays))
  unexpected = sorted(set(arrays) - set(expected))
  mis_shaped = sorted(f'{k}: file {tuple(arrays[k].shape)}, model {tuple(expected[k].shape)}'
                      for k in set(arrays) & set(expected)
                      if tuple(arrays[k].shape) != tuple(expected[k].shape))
  problems = [f'{title} ({len(keys)}):\n  ' + '\n  '.join(keys)
              for title, keys in (('missing keys', missing), ('unexpected keys', unexpected),
                                  ('shape mismatches', mis_shaped)) if keys]
  if problems:
    raise WeightsMismatchError(f'{source} does not fit {target}:\n' + '\n'.join(problems))


def convert_state_dict(state_dict: dict[str, np.ndarray], variant: str | None = None,
                       source: str = 'the state dict') -> BackboneWeights:
  """A torchvision / timm backbone state dict (torch keys) -> checked BackboneWeights.

  `variant` defaults to the one the keys imply; a different one is an error,
  as is any key or shape that the variant's model does not have. 'module.'
  prefixes (DataParallel) and BatchNorm's `num_batches_tracked` are ignored.
  """
  state_dict = {k.removeprefix('module.'): v for k, v in state_dict.items()
                if not k.endswith('.num_batches_tracked')}
  layout = _layout_of(list(state_dict), variant, source)
  arrays, unknown = {}, []
  for torch_key, value in state_dict.items():
    key = _flax_key(torch_key, value.ndim, layout)
    if key is None:
      unknown.append(torch_key)
    else:
      arrays[key] = _to_flax_layout(key, value, layout)
  if unknown:
    raise WeightsMismatchError(f'{source} has keys that are no torchvision {layout.family} '
                               f'parameters (unexpected keys): {sorted(unknown)}.')
  try:
    found = layout.variant(list(arrays))
    weights = BackboneWeights(found, arrays)
    options = weights.options
  except ValueError as e:
    raise WeightsMismatchError(f'{source} {e}') from e
  if variant is not None and variant != found:
    raise WeightsMismatchError(f'{source} holds a {found}, not the requested {variant}.')
  model = weights.create_model()
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  described = ', '.join(f'{k} {v}' for k, v in options.items() if v is not None)
  check_arrays(arrays, _flatten(shapes), source, f'a {found} of {described}')
  return weights


def save_npz(path: str, weights: BackboneWeights) -> None:
  """Writes the flat arrays and the variant name; `load_weights` reads it back."""
  npz = io.BytesIO()
  np.savez(npz, **weights.arrays, **{VARIANT_KEY: np.array(weights.variant)})
  storage.path(path).write_bytes(npz.getvalue())


def load_weights(path: str, variant: str | None = None) -> BackboneWeights:
  """Converted weights from a `.npz` of `save_npz`, or a `.safetensors` / `.pth` converted now."""
  if not path.endswith('.npz'):
    return convert_state_dict(load_state_dict(path), variant, source=path)
  data = _existing(path).read_bytes()
  if not zipfile.is_zipfile(io.BytesIO(data)):
    raise UserError(f'{path} is not a .npz file of clan_jax.cli.convert_weights that can '
                    'be read (it is not a zip archive).')
  try:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
      arrays = {k: npz[k] for k in npz.files}
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    raise UserError(f'{path} is not a .npz file of clan_jax.cli.convert_weights that '
                    f'can be read ({_first_line(e)}).') from e
  if VARIANT_KEY not in arrays:
    raise UserError(f'{path} has no {VARIANT_KEY!r} entry: it was not written by '
                    'clan_jax.cli.convert_weights.')
  weights = BackboneWeights(str(arrays.pop(VARIANT_KEY)), arrays)
  if weights.variant not in backbones.BACKBONES:
    raise UserError(f'{path} holds a {weights.variant}, which is no registered backbone '
                     f'({tuple(backbones.BACKBONES)}).')
  if variant is not None and variant != weights.variant:
    raise WeightsMismatchError(f'{path} holds a {weights.variant}, not the requested {variant}.')
  return weights
