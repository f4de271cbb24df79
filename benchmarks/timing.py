"""Compiles and times train.py's real train step for a model config, on random data.

Shared by benchmarks/train_step.py and benchmarks/scaling.py. Imports nothing
that needs TensorFlow (clan_jax's models and training steps only).
"""
import dataclasses
import resource
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from clan_jax import sharding
from clan_jax.training import diagnostics, setup
from configs import default

CUDNN_ATTENTION_CALL = '__cudnn$fmha'  # the custom call's target, in the compiled HLO


@dataclasses.dataclass
class StepTiming:
  params: int  # parameter count
  compile_s: float  # lowering + compiling the step
  step_s: float  # mean wall time of one step
  xla_bytes: int  # XLA's estimate for the compiled step: arguments + temporaries
  temp_bytes: int  # its temporaries alone
  saved_bytes: int  # activations kept for the backward pass (saved_activation_bytes)
  flops: float  # XLA's cost analysis of one step, per device
  peak_kind: str
  peak_bytes: int
  cudnn_attention: bool  # whether the compiled step calls cuDNN's fused attention
  diagnostics_s: float  # `diagnostics.compute` alone, compiled on its own (an upper bound)
  merge_s: float  # the loop's eager merge of one step's metrics into the running ones


def peak_memory() -> tuple[str, int]:
  """The device's peak bytes in use (GPU/TPU), or the process's peak RSS (CPU)."""
  stats = jax.devices()[0].memory_stats()
  if stats and 'peak_bytes_in_use' in stats:
    return 'device peak', stats['peak_bytes_in_use']
  # ru_maxrss is in KiB on Linux, and only grows.
  return 'process peak RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def saved_activation_bytes(model, image_size: int, batch_size: int) -> int:
  """Bytes the forward pass keeps for the backward pass: the residuals of `jax.vjp`.

  This is what rematerialisation reduces, measured before XLA sees the program
  (XLA's CPU compiler removes the recomputation again, see BENCHMARKS.md).
  Computes nothing: shapes only.
  """
  images = jax.ShapeDtypeStruct((batch_size, image_size, image_size, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                             images)

  def residuals(params, batch_stats, images):
    def loss(params):
      outputs, _ = model.apply({'params': params, 'batch_stats': batch_stats}, images,
                               train=True, mutable=['batch_stats'])
      return sum(jnp.sum(logits) for logits in outputs['branches'].values())
    return jax.vjp(loss, params)[1]

  saved = jax.eval_shape(residuals, variables['params'], variables['batch_stats'], images)
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(saved))


def seconds_per_call(fn, num_calls: int) -> float:
  """Mean wall time of `fn()` over `num_calls` calls in a row, its last result ready."""
  started = time.perf_counter()
  for _ in range(num_calls):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - started) / num_calls


def _mean_time(fn, num_runs: int) -> float:
  """Mean wall time of `fn()` over `num_runs` runs, after one untimed run."""
  jax.block_until_ready(fn())
  return seconds_per_call(fn, num_runs)


def diagnostics_seconds(state, images: jax.Array, num_runs: int = 10) -> float:
  """Time of the train step's diagnostics compiled on their own, for `state`'s model.

  Inside the step XLA fuses these reductions with the reads the update already
  does (the gradient's global norm among them), so this bounds their share of
  the step from above. The gradients are stood in for by the parameters: only
  their shapes matter.
  """
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  _, updates = jax.eval_shape(
      lambda v, x: state.apply_fn(v, x, train=True, mutable=['batch_stats', 'intermediates']),
      variables, images)
  intermediates = jax.tree.map(lambda s: jnp.full(s.shape, 0.5, s.dtype),
                               updates.get('intermediates', {}))
  compute = jax.jit(diagnostics.compute)
  return _mean_time(lambda: compute(state.params, state.params, intermediates), num_runs)


def _flops(compiled) -> float:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older JAX: one dict per program
    analysis = analysis[0]
  return float((analysis or {}).get('flops', float('nan')))


def train_step_setup(model_config: ml_collections.ConfigDict, *, image_size: int,
                     batch_size: int, num_classes: int):
  """(setup.Run, its initial state, a random global batch) for `model_config` on this
  machine's devices, as train.py builds them (configs/default.py otherwise)."""
  config = default.get_config()
  config.model = model_config
  config.data.image_size = image_size
  mesh = sharding.create_mesh(config.mesh)
  run = setup.create(config, num_classes, mesh, steps_per_epoch=100, total_steps=10_000)
  rng = np.random.default_rng(0)
  batch = jax.device_put(
      {'image': rng.normal(size=(batch_size, image_size, image_size, 3)).astype(np.float32),
       'label': rng.integers(0, num_classes, batch_size).astype(np.int32)},
      sharding.batch_sharding(mesh))
  return run, run.state, batch


def time_train_step(model_config: ml_collections.ConfigDict, *, image_size: int,
                    batch_size: int, num_classes: int, warmup: int,
                    num_steps: int) -> StepTiming:
  """Compiles the train step of `model_config`, runs `warmup` steps, times `num_steps`."""
  run, state, batch = train_step_setup(model_config, image_size=image_size,
                                       batch_size=batch_size, num_classes=num_classes)
  started = time.perf_counter()
  compiled = run.train_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - started
  analysis = compiled.memory_analysis()
  for _ in range(warmup):
    state, _ = compiled(state, batch)
  jax.block_until_ready(state)
  started = time.perf_counter()
  for _ in range(num_steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready((state, metrics))
  step_s = (time.perf_counter() - started) / num_steps
  peak_kind, peak_bytes = peak_memory()
  running = run.train_metrics_cls.empty()
  return StepTiming(
      params=sum(x.size for x in jax.tree.leaves(state.params)), compile_s=compile_s,
      step_s=step_s,
      xla_bytes=analysis.argument_size_in_bytes + analysis.temp_size_in_bytes,
      temp_bytes=analysis.temp_size_in_bytes,
      saved_bytes=saved_activation_bytes(run.model, image_size, batch_size),
      flops=_flops(compiled),
      peak_kind=peak_kind, peak_bytes=peak_bytes,
      cudnn_attention=CUDNN_ATTENTION_CALL in compiled.as_text(),
      diagnostics_s=diagnostics_seconds(state, batch['image']),
      merge_s=_mean_time(lambda: running.merge(metrics), num_steps))
