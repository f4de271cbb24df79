"""CLAN ResNet-50 training speed in JAX (fp32/bf16, remat off/on) and in PyTorch, side by side.

  python benchmarks/scaling.py --size=448 --batch=32            # GPU: the full figures
  python benchmarks/scaling.py --size=96 --batch=4 --steps=2    # CPU: minutes

For each JAX variant it compiles train.py's real train step (benchmarks/timing.py)
and prints images/s, step time, compile time, memory and model FLOPs
utilisation; then it trains the same CLAN written in PyTorch
(benchmarks/torch_clan.py: channels-last, AMP bfloat16 for the bf16 rows, and
`torch.compile` on a GPU) on the same batch, and prints the JAX/PyTorch
throughput ratio. A remat row is compared with PyTorch without recomputation.

MFU = XLA's FLOPs of one step (cost analysis of the compiled step: forward,
backward and optimizer, per device) x steps/s / the device's peak. The peak is
the dense bfloat16 tensor-core peak for bf16 rows and the dense TF32 peak for
fp32 rows (XLA runs float32 convolutions and matmuls in TF32 on these GPUs by
default); the script names it. On a CPU there is no meaningful peak: MFU is
printed only with --peak_tflops.

Memory: 'XLA GiB' is the compiled step's arguments + temporaries (XLA's
estimate); 'saved GiB' the activations the forward pass keeps for the
backward pass (the residuals of jax.vjp, before XLA: what remat reduces);
PyTorch's peak is torch.cuda.max_memory_allocated (GPU) or the process's peak
RSS so far (CPU).

Needs jax, flax, optax, orbax, torch, and clan_jax's plain-Python dependencies
(ml_collections, clu); nothing here imports TensorFlow.
"""
import os
import resource
import sys
import time

from absl import app, flags
import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.timing import time_train_step  # pylint: disable=g-import-not-at-top
from configs import base

flags.DEFINE_integer('size', 448, 'Square input resolution.')
flags.DEFINE_integer('batch', 32, 'Global batch size.')
flags.DEFINE_string('backbone', 'resnet50', 'torchvision ResNet name.')
flags.DEFINE_integer('width', 64, 'Backbone stem width (torchvision: 64); smaller for tests.')
flags.DEFINE_integer('num_classes', 200, 'Classes of every head (CUB: 200).')
flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'Compute dtypes.')
flags.DEFINE_list('remat', ['none', 'all'], 'config.model.remat values (JAX only).')
flags.DEFINE_integer('warmup', 2, 'Untimed steps after compiling.')
flags.DEFINE_integer('steps', 10, 'Timed steps.')
flags.DEFINE_bool('torch', True, 'Also time the PyTorch CLAN.')
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


def time_torch(dtype: str) -> dict[str, float]:
  """Trains benchmarks/torch_clan.CLAN on one random batch; times like time_train_step."""
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_clan  # pylint: disable=g-import-not-at-top

  cuda = torch.cuda.is_available()
  device = torch.device('cuda' if cuda else 'cpu')
  torch.manual_seed(0)
  model = torch_clan.CLAN(FLAGS.num_classes, FLAGS.backbone, FLAGS.width).to(
      device, memory_format=torch.channels_last).train()
  optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9,
                              weight_decay=5e-4)
  forward = torch.compile(model) if cuda else model
  images = torch.randn(FLAGS.batch, 3, FLAGS.size, FLAGS.size, device=device).to(
      memory_format=torch.channels_last)
  labels = torch.randint(0, FLAGS.num_classes, (FLAGS.batch,), device=device)

  def step():
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == 'bfloat16'):
      loss = torch_clan.clan_loss(forward(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss

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


def main(argv):
  del argv
  device = jax.devices()[0]
  print(f'CLAN {FLAGS.backbone} (width {FLAGS.width}), {FLAGS.size}x{FLAGS.size}, batch {FLAGS.batch}, '
        f'{FLAGS.num_classes} classes, {jax.device_count()} x {device.device_kind}, '
        f'JAX {jax.__version__}; mean of {FLAGS.steps} steps after {FLAGS.warmup} '
        'warm-up steps', flush=True)
  torch_results = {}
  if FLAGS.torch:
    import torch  # pylint: disable=g-import-not-at-top
    mode = 'torch.compile' if torch.cuda.is_available() else 'eager'
    print(f'PyTorch {torch.__version__} ({mode}, channels_last, '
          f'{torch.get_num_threads()} CPU threads)', flush=True)
  header = (f'{"variant":<16} {"img/s":>8} {"step ms":>9} {"compile s":>9} '
            f'{"XLA GiB":>8} {"saved GiB":>9} {"TFLOP/step":>10} {"MFU":>6} | {"torch img/s":>11} '
            f'{"step ms":>9} {"1st step s":>10} {"peak GiB":>8} | {"JAX/torch":>9}')
  rows = []
  for dtype in FLAGS.dtypes:
    for remat in FLAGS.remat:
      model_config = base.get_model_config()
      model_config.backbone, model_config.backbone_width = FLAGS.backbone, FLAGS.width
      model_config.dtype, model_config.remat = dtype, remat
      t = time_train_step(model_config, image_size=FLAGS.size, batch_size=FLAGS.batch,
                          num_classes=FLAGS.num_classes, warmup=FLAGS.warmup,
                          num_steps=FLAGS.steps)
      peak, peak_name = device_peak(dtype)
      mfu = f'{t.flops / t.step_s / peak:6.1%}' if peak else f'{"-":>6}'
      if FLAGS.torch and dtype not in torch_results:
        torch_results[dtype] = time_torch(dtype)
      r = torch_results.get(dtype)
      torch_cells = (f'{FLAGS.batch / r["step_s"]:>11.1f} {r["step_s"] * 1e3:>9.1f} '
                     f'{r["first_s"]:>10.1f} {r["peak_bytes"] / 2**30:>8.2f} | '
                     f'{r["step_s"] / t.step_s:>8.2f}x') if r else ''
      name = SHORT_DTYPES.get(dtype, dtype) + (f' remat={remat}' if remat != 'none' else '')
      rows.append(f'{name:<16} '
                  f'{FLAGS.batch / t.step_s:>8.1f} {t.step_s * 1e3:>9.1f} '
                  f'{t.compile_s:>9.1f} {t.xla_bytes / 2**30:>8.2f} {t.saved_bytes / 2**30:>9.2f} '
                  f'{t.flops / 1e12:>10.3f} {mfu} | {torch_cells}')
      print(f'  {rows[-1]}   [{t.peak_kind} so far {t.peak_bytes / 2**30:.2f} GiB; '
            f'MFU peak: {peak_name}]', flush=True)
  print('\n' + header)
  print('\n'.join(rows))


if __name__ == '__main__':
  jax.config.config_with_absl()  # JAX's options as flags, e.g. --jax_platforms=cpu
  app.run(main)
