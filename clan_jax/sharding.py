"""The device mesh, how the state and the batch are laid out on it, and batches onto it.

The mesh has two named axes, 'data' and 'fsdp' (config.mesh). The batch is
split over both. `config.mesh.strategy` chooses the layout of the train state:

- 'data': pure data parallelism, every device holds the whole state (the fsdp
  axis has size 1).
- 'fsdp': fully sharded data parallelism. Every parameter, optimizer-state and
  BatchNorm-statistic array with at least `config.mesh.fsdp_min_size`
  elements is split over the fsdp axis along its largest dimension that the
  axis size divides; smaller arrays (biases, BatchNorm vectors, scalars) and
  arrays with no such dimension are replicated. Inside the jitted step XLA
  all-gathers each parameter where it is used and reduce-scatters its
  gradient.

`state_sharding` is the one place these rules live; the train step is compiled
against whatever it returns, so one step serves both strategies.
"""
import collections
from collections.abc import Iterable, Iterator
import itertools
import math
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np

from clan_jax.user_errors import UserError

DATA_AXIS = 'data'
FSDP_AXIS = 'fsdp'
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)
STRATEGIES = ('data', 'fsdp')
# Arrays below this many elements stay replicated under FSDP: gathering them
# costs more in latency than their memory saves.
FSDP_MIN_SIZE = 2**16


def create_mesh(mesh_config: ml_collections.ConfigDict,
                devices: list[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp) mesh from `config.mesh` (strategy, data, fsdp; -1: the rest)."""
  devices = jax.devices() if devices is None else devices
  strategy = mesh_config.get('strategy', 'data')
  if strategy not in STRATEGIES:
    raise UserError(f'config.mesh.strategy={strategy!r} is not one of {STRATEGIES}.')
  num_data, num_fsdp = mesh_config.data, mesh_config.get('fsdp', -1)
  if strategy == 'data':
    num_fsdp = 1
  elif num_fsdp == -1:
    num_fsdp = len(devices) if num_data == -1 else len(devices) // max(num_data, 1)
  if num_data == -1:
    num_data = len(devices) // max(num_fsdp, 1)
  for field, value in (('data', num_data), ('fsdp', num_fsdp)):
    if value < 1 or len(devices) % value:
      raise UserError(f'config.mesh.{field}={getattr(mesh_config, field, -1)} must be -1 '
                      f'or divide the {len(devices)} available devices.')
  if num_data * num_fsdp > len(devices) or len(devices) % (num_data * num_fsdp):
    raise UserError(f'config.mesh.data x config.mesh.fsdp = {num_data} x {num_fsdp} '
                    f'must divide the {len(devices)} available devices.')
  return jax.make_mesh((num_data, num_fsdp), BATCH_AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * 2,
                       devices=devices[:num_data * num_fsdp])


def num_batch_shards(mesh: Mesh) -> int:
  """How many pieces each batch is split into (devices on the data and fsdp axes)."""
  return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data and fsdp axes."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int) -> P:
  """The FSDP partition of one array: its largest dimension that `fsdp_size` divides."""
  if fsdp_size == 1 or math.prod(shape) < min_size:
    return P()
  candidates = [d for d in range(len(shape)) if shape[d] % fsdp_size == 0]
  if not candidates:
    return P()
  dim = max(candidates, key=lambda d: (shape[d], d))
  return P(*(FSDP_AXIS if d == dim else None for d in range(len(shape))))


def state_sharding(mesh: Mesh, abstract_state: Any,
                   fsdp_min_size: int = FSDP_MIN_SIZE) -> Any:
  """Sharding of every leaf of the train state (see the module docstring)."""
  return jax.tree.map(
      lambda x: NamedSharding(mesh, fsdp_spec(np.shape(x), mesh.shape[FSDP_AXIS],
                                              fsdp_min_size)),
      abstract_state)


def check_batch_size(batch_size: int, mesh: Mesh, field: str) -> None:
  """Raises a clear error unless `batch_size` splits evenly over devices and processes."""
  divisor = np.lcm(num_batch_shards(mesh), jax.process_count())
  if batch_size % divisor:
    raise UserError(
        f'config.{field}={batch_size} must be divisible by {divisor} (the '
        f'{num_batch_shards(mesh)} devices on the data and fsdp axes and the '
        f'{jax.process_count()} processes).')


def to_global_batches(local_batches: Iterable[dict[str, np.ndarray]],
                      sharding: NamedSharding,
                      prefetch: int = 2) -> Iterator[dict[str, jax.Array]]:
  """Turns each process's share of a batch into global arrays sharded over the mesh.

  Keeps `prefetch` batches in flight, so the host-to-device copy of the next
  batch overlaps the current step.
  """
  def put(batch):
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, x), batch)

  iterator = iter(local_batches)
  queue = collections.deque(put(b) for b in itertools.islice(iterator, prefetch))
  for batch in iterator:
    queue.append(put(batch))
    yield queue.popleft()
  yield from queue
