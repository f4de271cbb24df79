"""CLAN ResNet-50 training speed in JAX (fp32/bf16, remat off/on) and in PyTorch, side by side.

  python -m benchmarks.scaling --size=448 --batch=32            # GPU: the full figures
  python -m benchmarks.scaling --size=96 --batch=4 --steps=2    # CPU: minutes

Per dtype, it compiles train.py's real train step (benchmarks/timing.py) for
each --remat value, then trains the same CLAN written in PyTorch
(benchmarks/torch_clan.py: the same function, channels-last, bf16 autocast for
the bf16 rows, 4-D attention for PyTorch's fused kernels) eagerly and under
`torch.compile`, each as a row of its own. Each row is printed as it finishes,
so a run cut short keeps its rows.

Columns: images/s; mean step time; compile time (PyTorch: its first step,
which includes `torch.compile`); memory (JAX: XLA's estimate of the compiled
step's arguments + temporaries; PyTorch: its peak allocation on a GPU, the
process's peak RSS so far on a CPU); model FLOPs per step, counted from the
layer shapes (benchmarks/flops.py: 3 x the forward's convolutions and matrix
products, attention's two per query-key pair), the same for every row; MFU
from that count; XLA's own FLOPs of the compiled step ("hardware FLOPs": it
counts a scan body once, a cuDNN call perhaps not at all, and remat's
recomputation); for a PyTorch row, JAX's throughput (remat off, same dtype)
over its own; for a JAX row, the attention path each CLCA tap took.

MFU's peak is the dense bfloat16 tensor-core peak for bf16 rows and the dense
TF32 peak for fp32 rows: float32 convolutions and matmuls run in TF32 on these
GPUs on both sides (JAX's default precision; PyTorch is set to the same with
`allow_tf32`, which it enables by default for convolutions only). On a CPU
there is no meaningful peak: MFU is printed only with --peak_tflops.

Needs jax, flax, optax, orbax, torch, and clan_jax's plain-Python dependencies
(ml_collections, clu); nothing here imports TensorFlow. On a GPU, set
XLA_PYTHON_CLIENT_PREALLOCATE=false (benchmarks/gpu.sh does), or JAX takes 75%
of the device's memory before PyTorch's rows run.
"""
import resource
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import ml_collections

from benchmarks import flops
from benchmarks.timing import time_train_step
from clan_jax import models
from clan_jax.models import attention
from configs import base

flags.DEFINE_integer('size', 448, 'Square input resolution.')
flags.DEFINE_integer('batch', 32, 'Global batch size.')
flags.DEFINE_string('backbone', 'resnet50', 'torchvision ResNet name.')
flags.DEFINE_integer('width', 64, 'Backbone stem width (torchvision: 64); smaller for tests.')
flags.DEFINE_integer('num_classes', 200, 'Classes of every head (CUB: 200).')
flags.DEFINE_list('dtypes', ['bfloat16', 'float32'], 'Compute dtypes, in this order.')
flags.DEFINE_list('remat', ['none', 'all'], 'config.model.remat values (JAX only).')
flags.DEFINE_integer('warmup', 2, 'Untimed steps after compiling.')
flags.DEFINE_integer('steps', 10, 'Timed steps.')
flags.DEFINE_list('torch_modes', ['eager', 'compiled'],
                  'PyTorch rows per dtype: eager, compiled (torch.compile); empty for none.')
flags.DEFINE_string('torch_compile_backend', 'inductor',
                    "torch.compile's backend ('eager' traces without generating code).")
flags.DEFINE_enum('attention_impl', 'auto', attention.IMPLEMENTATIONS,
                  "CLCA's attention path (config.model.clca.attention_impl).")
flags.DEFINE_float('peak_tflops', None,
                   'Peak TFLOP/s per device for MFU; default: from the device kind (GPU).')
FLAGS = flags.FLAGS

SHORT_DTYPES = {'float32': 'fp32', 'bfloat16': 'bf16'}
# Dense (no sparsity) peak TFLOP/s of the SXM parts: (bf16 tensor core, TF32 tensor core).
PEAK_TFLOPS = {'H100': (989.4, 494.7), 'H200': (989.4, 494.7), 'A100': (312.0, 156.0)}


def device_peak(dtype: str) -> tuple[float | None, str]:
  """(peak FLOP/s, its description) for `dtype` on this device; None where unknown."""
  kind = jax.devices()[0].device_kind
  if FLAGS.peak_tflops:
    return FLAGS.peak_tflops * 1e12, f'--peak_tflops={FLAGS.peak_tflops}'
  for name, (bf16, tf32) in PEAK_TFLOPS.items():
    if name in kind:
      peak, what = (bf16, 'bf16') if dtype == 'bfloat16' else (tf32, 'TF32')
      return peak * 1e12, f'{name} dense {what} {peak} TFLOP/s'
  return None, f'no known peak for {kind!r}'


def planned_attention(model_config: ml_collections.ConfigDict) -> dict[str, str]:
  """{tap: 'cuDNN' or 'blockwise' or 'reference'}: the path CLCA's attention takes there.

  As clan_jax/models/attention.py decides it from the attention's dtype and
  width (shapes only); cuDNN may still refuse at trace time (see `time_jax`).
  """
  model = models.create_model(model_config, FLAGS.num_classes)
  images = jax.ShapeDtypeStruct((1, FLAGS.size, FLAGS.size, 3), jnp.float32)
  params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                          images)['params']
  implementation = model_config.clca.attention_impl
  paths = {}
  for tap in model_config.mid_level_taps:
    inner = params[f'clca_{tap}']['w_theta']['kernel'].shape[-1]
    heads = jax.ShapeDtypeStruct((1, 1, inner), jnp.dtype(model_config.dtype))
    cudnn = implementation == 'auto' and attention.cudnn_applies(heads, heads)
    paths[tap] = 'cuDNN' if cudnn else ('reference' if implementation == 'reference'
                                        else 'blockwise')
  return paths


def time_jax(model_config: ml_collections.ConfigDict):
  """time_train_step of `model_config`, and the attention path of each tap.

  A step whose cuDNN attention fails to compile or run is timed again with
  the blockwise path, and says so.
  """
  paths = planned_attention(model_config)
  time_step = lambda config: time_train_step(
      config, image_size=FLAGS.size, batch_size=FLAGS.batch,
      num_classes=FLAGS.num_classes, warmup=FLAGS.warmup, num_steps=FLAGS.steps)
  try:
    t = time_step(model_config)
  except RuntimeError as e:  # jax's XlaRuntimeError among them
    if 'cuDNN' not in paths.values():
      raise
    print(f'  cuDNN attention failed ({str(e).splitlines()[0][:200]}); '
          'again with the blockwise path', flush=True)
    blockwise = model_config.copy_and_resolve_references()
    blockwise.clca.attention_impl = 'blockwise'
    return time_step(blockwise), {tap: 'blockwise (cuDNN failed)' for tap in paths}
  if 'cuDNN' in paths.values() and not t.cudnn_attention:
    paths = {tap: 'blockwise (cuDNN refused)' if path == 'cuDNN' else path
             for tap, path in paths.items()}
  return t, paths


def set_float32_precision(cuda: bool) -> str:
  """Gives PyTorch JAX's float32 policy on NVIDIA GPUs (TF32 matmuls and convs); says which."""
  import torch  # pylint: disable=g-import-not-at-top
  if not cuda:
    return 'float32 in full precision on both sides (no TF32 on a CPU)'
  torch.backends.cuda.matmul.allow_tf32 = True
  torch.backends.cudnn.allow_tf32 = True
  return ('float32 matmuls and convs in TF32 on both sides: JAX by default, PyTorch '
          'with torch.backends.cuda.matmul.allow_tf32 = cudnn.allow_tf32 = True')


def time_torch(dtype: str, mode: str) -> dict[str, float]:
  """Trains benchmarks/torch_clan.CLAN on one random batch; times like time_train_step."""
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_clan  # pylint: disable=g-import-not-at-top

  cuda = torch.cuda.is_available()
  device = torch.device('cuda' if cuda else 'cpu')
  step = torch_clan.sgd_step(
      FLAGS.num_classes, FLAGS.backbone, FLAGS.width, FLAGS.batch, FLAGS.size, device=device,
      dtype=dtype, compile_backend=FLAGS.torch_compile_backend if mode == 'compiled' else None)

  sync = torch.cuda.synchronize if cuda else lambda: None
  if cuda:
    torch.cuda.reset_peak_memory_stats()
  started = time.perf_counter()
  step()
  sync()
  first_s = time.perf_counter() - started
  for _ in range(FLAGS.warmup):
    step()
  sync()
  started = time.perf_counter()
  for _ in range(FLAGS.steps):
    loss = step()
  loss.item()
  sync()
  step_s = (time.perf_counter() - started) / FLAGS.steps
  peak = (torch.cuda.max_memory_allocated() if cuda
          else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
  return {'step_s': step_s, 'first_s': first_s, 'peak_bytes': peak}


def row(name: str, step_s: float, compile_s: float, memory_bytes: int, model_flops: float,
        peak: float | None, hardware: str, ratio: str, attention_paths: str) -> str:
  mfu = f'{model_flops / step_s / peak:6.1%}' if peak else f'{"-":>6}'
  return (f'{name:<22} {FLAGS.batch / step_s:>8.1f} {step_s * 1e3:>9.1f} {compile_s:>9.1f} '
          f'{memory_bytes / 2**30:>8.2f} {model_flops / 1e12:>11.3f} {mfu} {hardware:>10} '
          f'{ratio:>9}  {attention_paths}')


def main(argv):
  del argv
  device = jax.devices()[0]
  print(f'CLAN {FLAGS.backbone} (width {FLAGS.width}), {FLAGS.size}x{FLAGS.size}, batch '
        f'{FLAGS.batch}, {FLAGS.num_classes} classes, {jax.device_count()} x '
        f'{device.device_kind}, JAX {jax.__version__}; mean of {FLAGS.steps} steps after '
        f'{FLAGS.warmup} warm-up steps', flush=True)
  cuda = False
  if FLAGS.torch_modes:
    import torch  # pylint: disable=g-import-not-at-top
    cuda = torch.cuda.is_available()
    print(f'PyTorch {torch.__version__} (channels_last, {torch.get_num_threads()} CPU '
          f'threads, torch.compile backend {FLAGS.torch_compile_backend})', flush=True)
  print(set_float32_precision(cuda) if FLAGS.torch_modes else
        'float32: JAX default precision (TF32 matmuls and convs on NVIDIA GPUs)')
  model_config = base.get_model_config()
  model_config.backbone, model_config.backbone_width = FLAGS.backbone, FLAGS.width
  model_config.clca.attention_impl = FLAGS.attention_impl
  model_flops = flops.train_step_flops(model_config, image_size=FLAGS.size,
                                       batch_size=FLAGS.batch, num_classes=FLAGS.num_classes)
  print(f'model FLOPs per step, counted: {model_flops / 1e12:.3f} TFLOP (3 x forward)')
  print(f'\n{"row":<22} {"img/s":>8} {"step ms":>9} {"compile s":>9} {"mem GiB":>8} '
        f'{"model TFLOP":>11} {"MFU":>6} {"XLA TFLOP":>10} {"JAX/this":>9}  attention',
        flush=True)
  for dtype in FLAGS.dtypes:
    peak, peak_name = device_peak(dtype)
    short = SHORT_DTYPES.get(dtype, dtype)
    jax_step_s = None
    for remat in FLAGS.remat:
      model_config.dtype, model_config.remat = dtype, remat
      t, paths = time_jax(model_config)
      if remat == 'none':
        jax_step_s = t.step_s
      name = f'JAX {short}' + (f' remat={remat}' if remat != 'none' else '')
      print(row(name, t.step_s, t.compile_s, t.xla_bytes, model_flops, peak,
                f'{t.flops / 1e12:.3f}', '-',
                ', '.join(f'{tap} {path}' for tap, path in paths.items())), flush=True)
    for mode in FLAGS.torch_modes:
      r = time_torch(dtype, mode)
      ratio = f'{r["step_s"] / jax_step_s:.2f}x' if jax_step_s else '-'
      print(row(f'torch {short} {mode}', r['step_s'], r['first_s'], r['peak_bytes'],
                model_flops, peak, '-', ratio, 'SDPA'), flush=True)
    print(f'  [{short} MFU peak: {peak_name}]', flush=True)


if __name__ == '__main__':
  jax.config.config_with_absl()  # JAX's options as flags, e.g. --jax_platforms=cpu
  app.run(main)
