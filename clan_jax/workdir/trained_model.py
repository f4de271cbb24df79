"""A training workdir as a model: its config, class names and latest variables.

A workdir written by `train.py` holds `config.json`, `classes.json` and
`checkpoints/`. This module writes the first two and loads all three, so that
evaluation, prediction, export and fine-tuning need only the workdir.
"""
import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import ml_collections

from clan_jax import models, sharding, storage
from clan_jax.models import blocks
from clan_jax.models.variables import abstract_variables
from clan_jax.user_errors import MissingFileError, UserError
from clan_jax.workdir import checkpointing, compatibility

CONFIG_FILE = 'config.json'
CLASSES_FILE = 'classes.json'
CHECKPOINT_DIR = 'checkpoints'
# Model fields that change how the model is computed, not its variables: a run
# may resume with others (e.g. on a GPU, with bfloat16 and cuDNN attention).
# Each block declares its own (BlockSpec.compute_only_fields).
COMPUTE_ONLY_FIELDS = ('model.dtype', 'model.remat', 'model.remat_policy')


def compute_only_fields() -> tuple[str, ...]:
  """COMPUTE_ONLY_FIELDS and every registered block's, as dotted names."""
  return COMPUTE_ONLY_FIELDS + tuple(
      f'model.{name}.{field}' for name, spec in blocks.registered().items()
      for field in spec.compute_only_fields)


@dataclasses.dataclass(frozen=True)
class TrainedModel:
  config: ml_collections.ConfigDict
  model: nn.Module
  variables: dict[str, Any]  # {'params': ..., 'batch_stats': ...}
  class_names: list[str]
  step: int
  mesh: Mesh  # the variables are replicated over it


def save_run_info(workdir: str, config: ml_collections.ConfigDict,
                  class_names: Sequence[str]) -> None:
  """Writes the config and class names next to the checkpoints (process 0 only)."""
  if jax.process_index() != 0:
    return
  directory = storage.path(workdir)
  directory.mkdir(parents=True, exist_ok=True)
  (directory / CONFIG_FILE).write_text(
      compatibility.without_old_names(config).to_json_best_effort(indent=2))
  (directory / CLASSES_FILE).write_text(json.dumps(list(class_names), indent=1))


def check_same_model(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Raises a ValueError if `workdir` was trained with another model or dataset.

  Resuming restores the checkpoint into `config`'s model: a different one
  would fail deep inside orbax, so this names the fields that differ instead.
  Other fields (schedule length, logging, ...) may change between runs.
  """
  if not (storage.path(workdir) / CONFIG_FILE).exists():
    return
  stored, current = (
      traverse_util.flatten_dict(json.loads(c.to_json_best_effort()), sep='.')
      for c in (load_config(workdir), compatibility.without_old_names(config)))
  compute_only = compute_only_fields()
  # The options of a block that the model does not use do not change it.
  unused = tuple(f'model.{name}.' for name in blocks.registered()
                 if name not in (config.model.mid_block, config.model.top_block))
  differ = [f'{key}: {stored.get(key)!r} -> {current.get(key)!r}'
            for key in sorted(stored.keys() | current.keys())
            if (key == 'data.dataset' or key.startswith('model.'))
            and key not in compute_only and not key.startswith(unused)
            and stored.get(key) != current.get(key)]
  if differ:
    raise UserError(
        f'{workdir} holds checkpoints of another model or dataset ({"; ".join(differ)}). '
        'Use a new --workdir for it.')


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with."""
  path = storage.path(workdir) / CONFIG_FILE
  if not path.exists():
    raise MissingFileError(f'{path} not found: {workdir} is not a train.py workdir.')
  # A workdir of an older version has the config of its time.
  return compatibility.upgrade(json.loads(path.read_text()))


def load(workdir: str, *, step: int | None = None, mesh: Mesh | None = None
         ) -> TrainedModel:
  """Restores the model of `workdir` at `step` (default: the latest checkpoint).

  The variables are replicated over `mesh` (default: all devices).
  """
  config = load_config(workdir)
  class_names = json.loads((storage.path(workdir) / CLASSES_FILE).read_text())
  mesh = sharding.create_mesh(ml_collections.ConfigDict({'data': -1})) if mesh is None else mesh
  models.validate_model_config(config.model)
  model = models.create_model(config.model, len(class_names))
  checkpoint_dir = storage.path(workdir) / CHECKPOINT_DIR
  if step is not None and not (checkpoint_dir / str(step)).exists():
    names = [p.name for p in checkpoint_dir.iterdir()] if checkpoint_dir.exists() else []
    saved = sorted(int(n) for n in names if n.isdigit())
    raise MissingFileError(f'No checkpoint of step {step} in {checkpoint_dir}; its '
                           f'steps are {saved}.')
  checkpointer = checkpointing.Checkpointer(
      checkpoint_dir, save_every_steps=1, max_to_keep=None)
  # Only the model's variables and the step are read, so no optimizer is
  # built and a workdir stays loadable whatever the optimizer config becomes.
  variables = abstract_variables(model, config.data.image_size, mesh)
  restored = checkpointer.restore(
      {'step': jax.ShapeDtypeStruct((), jnp.int32, sharding=sharding.replicated(mesh)),
       **variables}, step, partial=True)
  checkpointer.close()
  return TrainedModel(config=config, model=model,
                      variables={k: restored[k] for k in variables},
                      class_names=class_names, step=int(restored['step']), mesh=mesh)
