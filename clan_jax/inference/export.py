"""Exports a trained CLAN's inference function as serialised StableHLO (`jax.export`).

  python -m clan_jax.cli.export --checkpoint=workdirs/default --out=/tmp/clan.jax_exported

writes the serialised function to --out and a sidecar, `<out>.json`, with the
class names, the input size and the preprocessing constants. The variables are
constants inside the function, so running it needs jax alone, not this package:

  import json, jax, numpy as np
  with open('/tmp/clan.jax_exported', 'rb') as f:
    infer = jax.export.deserialize(bytearray(f.read()))
  info = json.load(open('/tmp/clan.jax_exported.json'))
  outputs = infer.call(images)   # images: float32 [B, S, S, 3], normalised
  outputs['combined'], outputs['branches']['top']   # [B, K] each

Preprocessing, as evaluation does it (`input_pipeline.preprocess_for_eval`):
RGB, shorter side resized to info['resize_size'] (antialiased bilinear, rounded
to uint8), central info['image_size'] square, then (pixel - mean_rgb) /
stddev_rgb with the constants on the 0..255 scale.
"""
from collections.abc import Sequence
import json
from typing import Any

import jax
from jax import export as jax_export
import jax.numpy as jnp

from clan_jax import models, storage
from clan_jax.data import input_pipeline
from clan_jax.workdir import trained_model

BATCH_DIM = 'batch'
SIDECAR_SUFFIX = '.json'


def export_inference(trained: trained_model.TrainedModel, *,
                     batch_size: int | None = None,
                     platforms: Sequence[str] | None = None) -> jax_export.Exported:
  """The model in eval mode, normalised images -> outputs, with its variables built in.

  Args:
    trained: a loaded workdir.
    batch_size: a fixed batch size; None: symbolic, any batch size.
    platforms: e.g. ('cpu', 'cuda'); None: the default backend's.

  Returns:
    An Exported of images float32 [B, S, S, 3] (S = config.data.image_size,
    normalised) -> {'branches': {name: logits [B, K] float32}, 'combined':
    [B, K] float32}, as CLAN returns them.
  """
  # On the host, so that the constants are plain arrays, not ones sharded
  # over this machine's devices.
  variables = jax.device_get(trained.variables)
  model = trained.model

  def infer(images: jax.Array) -> dict[str, Any]:
    return model.apply(variables, images, train=False)

  size = trained.config.data.image_size
  batch = jax_export.symbolic_shape(BATCH_DIM)[0] if batch_size is None else batch_size
  images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  return jax_export.export(jax.jit(infer), platforms=platforms)(images)


def sidecar(trained: trained_model.TrainedModel, exported: jax_export.Exported
            ) -> dict[str, Any]:
  """What a user of the exported function needs to know: classes, input, outputs."""
  config = trained.config
  batch = exported.in_avals[0].shape[0]
  return {
      'format': 'jax.export (serialised StableHLO): jax.export.deserialize(bytes).call(images)',
      'class_names': trained.class_names,
      'input': {'shape': [str(batch) if not isinstance(batch, int) else batch,
                          config.data.image_size, config.data.image_size, 3],
                'dtype': 'float32', 'layout': 'NHWC, RGB, normalised'},
      'outputs': {'branches': {name: 'logits [B, K]' for name in models.branch_names(
                      config.model.mid_level_taps, config.model.use_mid_block,
                      config.model.use_top_block)},
                  'combined': ('mean of the branches\' softmax probabilities [B, K]'
                               if config.model.combine == 'mean_softmax'
                               else 'sum of the branches\' logits [B, K]')},
      'preprocessing': ('RGB; resize the shorter side to resize_size (antialiased '
                        'bilinear, rounded to uint8); crop the central image_size '
                        'square; (pixel - mean_rgb) / stddev_rgb on the 0..255 scale.'),
      'resize_size': config.data.resize_size,
      'image_size': config.data.image_size,
      'mean_rgb': list(input_pipeline.MEAN_RGB),
      'stddev_rgb': list(input_pipeline.STDDEV_RGB),
      'platforms': list(exported.platforms),
      'step': trained.step,
  }


def save(exported: jax_export.Exported, info: dict[str, Any], path: str) -> None:
  """Writes the serialised function to `path` and `info` to `path`.json."""
  out = storage.path(path)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_bytes(exported.serialize())
  storage.path(f'{path}{SIDECAR_SUFFIX}').write_text(json.dumps(info, indent=1))
