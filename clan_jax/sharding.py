"""The device mesh, how the state and the batch are laid out on it, and batches onto it.

Data parallelism: the batch is split over the mesh's 'data' axis; the train
state is replicated. `state_sharding` is the one place where parameter sharding
rules (FSDP) go; the train step is compiled against whatever it returns.
"""
import collections
from collections.abc import Iterable, Iterator
import itertools
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np

from clan_jax.user_errors import UserError

DATA_AXIS = 'data'


def create_mesh(mesh_config: ml_collections.ConfigDict,
                devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over `config.mesh.data` devices (-1: all of them)."""
  devices = jax.devices() if devices is None else devices
  num_data = len(devices) if mesh_config.data == -1 else mesh_config.data
  if num_data < 1 or num_data > len(devices) or len(devices) % num_data:
    raise UserError(f'config.mesh.data={mesh_config.data} must be -1 or divide the '
                    f'{len(devices)} available devices.')
  return jax.make_mesh((num_data,), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices[:num_data])


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def state_sharding(mesh: Mesh, abstract_state: Any) -> Any:
  """Sharding of every leaf of the train state: replicated (pure data parallel)."""
  return jax.tree.map(lambda _: replicated(mesh), abstract_state)


def check_batch_size(batch_size: int, mesh: Mesh, field: str) -> None:
  """Raises a clear error unless `batch_size` splits evenly over devices and processes."""
  divisor = np.lcm(mesh.shape[DATA_AXIS], jax.process_count())
  if batch_size % divisor:
    raise UserError(
        f'config.{field}={batch_size} must be divisible by {divisor} (the '
        f'{mesh.shape[DATA_AXIS]} devices on the data axis and the '
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
