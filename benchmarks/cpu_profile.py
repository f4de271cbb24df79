"""Where a CPU train step's time goes, per op class, in JAX (XLA's profile) and in PyTorch.

  python -m benchmarks.cpu_profile                     # the demo's model, 96 px, batch 32
  python -m benchmarks.cpu_profile --backbone=resnet50 --width=64 --size=128 --batch=8 \
      --num_classes=200 --steps=5

JAX: train.py's compiled train step (benchmarks/timing.py builds it) is traced
with `jax.profiler` and XLA:CPU's per-thunk trace events
(`--xla_cpu_enable_xprof_traceme`); each event is an instruction of the
compiled HLO, classed by what it is: a convolution by its dimension labels
(forward, input gradient, filter gradient), a fusion by the ops inside it.
PyTorch: benchmarks/torch_clan.py's CLAN, eager, under `torch.profiler`, its
top-level aten ops classed the same way. Both sides print milliseconds per step
and their share of the op time; the step time itself is measured without the
profiler (the profiler adds its own cost).

Op time is summed over threads, and XLA:CPU runs independent ops at the same
time on its threads, so a class's share of the op time is not its share of
the wall time: an op off the critical path costs less than it shows (measured
in BENCHMARKS.md: 17 ms of op time removed, 3.5 ms of wall time gained).

Needs jax, flax, optax, torch and clan_jax's plain-Python dependencies; nothing
here imports TensorFlow.
"""
import collections
import os
import re
import sys
import tempfile
import time

# Per-thunk trace events must be on before XLA compiles anything.
if 'xla_cpu_enable_xprof_traceme' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                             + ' --xla_cpu_enable_xprof_traceme=true').strip()

from absl import app, flags  # pylint: disable=g-import-not-at-top
import jax

from benchmarks import timing
from clan_jax.models.resnet import RESNET_VARIANTS
from configs import default

flags.DEFINE_integer('size', 96, 'Square input resolution.', lower_bound=32)
flags.DEFINE_integer('batch', 32, 'Global batch size.', lower_bound=1)
flags.DEFINE_enum('backbone', 'resnet18', tuple(RESNET_VARIANTS),
                  'torchvision ResNet (benchmarks/torch_clan.py has ResNets only).')
flags.DEFINE_integer('width', 16, 'Backbone stem width (torchvision: 64).', lower_bound=1)
flags.DEFINE_integer('num_classes', 32, 'Classes of every head.', lower_bound=2)
flags.DEFINE_integer('steps', 10, 'Profiled steps (and as many timed without the profiler).',
                     lower_bound=1)
flags.DEFINE_integer('top', 12, 'Slowest single ops listed per side.', lower_bound=0)
flags.DEFINE_bool('torch', True, "Profile PyTorch's eager step as well.")
FLAGS = flags.FLAGS

# The order in which the tables list the classes.
CLASSES = ('conv forward', 'conv input grad', 'conv filter grad',
           'conv backward (input + filter)', 'matmul / attention',
           'batchnorm, relu, add (fused)', 'reductions', 'optimizer / copies', 'other')


def conv_class(line: str, kernel_shapes: set[tuple[int, ...]]) -> str:
  """A convolution's role in the step, from its HLO line.

  The filter gradient's output has the shape of a kernel (XLA drops its
  op_name when it rewrites it); of the others, the input gradient is the one
  JAX's transpose rule made (`transpose(` in its op_name).
  """
  shape = re.search(r' = \w+\[([\d,]*)\]', line)
  dims = tuple(sorted(int(d) for d in shape.group(1).split(','))) if shape else ()
  if dims in kernel_shapes:
    return 'conv filter grad'
  op_name = re.search(r'op_name="([^"]*)"', line)
  return 'conv input grad' if op_name and 'transpose(' in op_name.group(1) else 'conv forward'


def _opcode(line: str) -> str:
  """The opcode of an HLO instruction line, `%name = SHAPE opcode(operands), ...`."""
  rest = line.split(' = ', 1)[1]
  if rest.startswith('('):  # a tuple shape, which holds spaces: skip to its closing parenthesis
    depth = 0
    for i, char in enumerate(rest):
      depth += {'(': 1, ')': -1}.get(char, 0)
      if depth == 0:
        rest = rest[i + 1:]
        break
  else:
    rest = rest.split(' ', 1)[1]
  return rest.strip().split('(', 1)[0]


def hlo_classes(hlo_text: str, kernel_shapes: set[tuple[int, ...]]) -> dict[str, str]:
  """{instruction name: class} for every instruction of the compiled step's HLO.

  `kernel_shapes`: the sorted dimensions of every convolution kernel of the model.
  """
  computations, current = {}, None
  for line in hlo_text.splitlines():
    header = re.match(r'^(?:ENTRY )?%?([\w.\-]+) .*\{$', line)
    if header:
      current = computations.setdefault(header.group(1), [])
    elif current is not None and ' = ' in line:
      current.append(line)

  def classify(line: str) -> str:
    opcode = _opcode(line)
    if opcode == 'convolution':
      return conv_class(line, kernel_shapes)
    if opcode in ('dot', 'custom-call') or 'dot(' in line:
      return 'matmul / attention'
    if opcode == 'fusion':
      called = re.search(r'calls=%?([\w.\-]+)', line)
      body = computations.get(called.group(1), []) if called else []
      inner = ' '.join(body)
      if ' convolution(' in inner:
        conv = next(l for l in body if ' convolution(' in l)
        return classify(conv)
      if ' dot(' in inner:
        return 'matmul / attention'
      if ' reduce(' in inner or ' reduce-window(' in inner:
        return 'reductions'
      return 'batchnorm, relu, add (fused)'
    if opcode in ('reduce', 'reduce-window', 'select-and-scatter'):
      return 'reductions'
    if opcode in ('copy', 'copy-start', 'copy-done', 'dynamic-update-slice', 'tuple',
                  'get-tuple-element', 'parameter', 'bitcast', 'transpose'):
      return 'optimizer / copies'
    return 'other'

  return {re.match(r'\s*(?:ROOT )?%?([\w.\-]+) =', line).group(1): classify(line)
          for lines in computations.values() for line in lines
          if re.match(r'\s*(?:ROOT )?%?([\w.\-]+) =', line)}


def jax_profile() -> tuple[float, dict[str, float], list[tuple[str, float]]]:
  """(step seconds, {class: seconds per step}, [(op, seconds per step)]) of the JAX step."""
  model_config = default.get_config().model
  model_config.backbone = FLAGS.backbone
  model_config.backbone_width = FLAGS.width
  run, state, batch = timing.train_step_setup(
      model_config, image_size=FLAGS.size, batch_size=FLAGS.batch, num_classes=FLAGS.num_classes)
  compiled = run.train_step.lower(state, batch).compile()
  kernel_shapes = {tuple(sorted(x.shape)) for x in jax.tree.leaves(state.params) if x.ndim == 4}
  classes = hlo_classes(compiled.as_text(), kernel_shapes)
  for _ in range(3):
    state, _ = compiled(state, batch)
  jax.block_until_ready(state)
  started = time.perf_counter()
  for _ in range(FLAGS.steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready((state, metrics))
  step_s = (time.perf_counter() - started) / FLAGS.steps

  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      for _ in range(FLAGS.steps):
        state, metrics = compiled(state, batch)
      jax.block_until_ready((state, metrics))
    (path,) = [os.path.join(d, f) for d, _, fs in os.walk(trace_dir) for f in fs
               if f.endswith('.xplane.pb')]
    profile = jax.profiler.ProfileData.from_file(path)
  per_op = collections.Counter()
  for plane in profile.planes:
    for line in plane.lines:
      for event in line.events:
        if event.name in classes:
          per_op[event.name] += event.duration_ns * 1e-9 / FLAGS.steps
  per_class = collections.Counter()
  for name, seconds in per_op.items():
    per_class[classes[name]] += seconds
  return step_s, per_class, [(f'{n} ({classes[n]})', s) for n, s in per_op.most_common(FLAGS.top)]


# PyTorch computes a convolution's input and filter gradients in one op.
TORCH_CLASSES = (
    ('conv backward (input + filter)', ('convolution_backward',)),
    ('conv forward', ('aten::convolution', 'aten::_convolution', 'mkldnn_convolution')),
    ('matmul / attention', ('aten::addmm', 'aten::mm', 'aten::bmm', 'attention', 'aten::linear',
                            'aten::matmul')),
    ('batchnorm, relu, add (fused)', ('batch_norm', 'relu', 'threshold', 'aten::add',
                                      'aten::mul', 'aten::sigmoid', 'aten::div')),
    ('reductions', ('pool', 'aten::mean', 'aten::sum', 'softmax', 'cross_entropy', 'nll')),
    ('optimizer / copies', ('Optimizer', 'aten::copy_', 'aten::to', 'zero_', 'aten::clone',
                            'contiguous')),
)


def torch_class(name: str) -> str:
  for cls, keys in TORCH_CLASSES:
    if any(k in name for k in keys):
      return cls
  return 'other'


def torch_profile() -> tuple[float, dict[str, float], list[tuple[str, float]]]:
  """The same as `jax_profile` for PyTorch's eager step (self CPU time of each op)."""
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_clan  # pylint: disable=g-import-not-at-top

  step = torch_clan.sgd_step(FLAGS.num_classes, FLAGS.backbone, FLAGS.width, FLAGS.batch,
                             FLAGS.size, device=torch.device('cpu'))

  for _ in range(3):
    step()
  started = time.perf_counter()
  for _ in range(FLAGS.steps):
    step()
  step_s = (time.perf_counter() - started) / FLAGS.steps
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(FLAGS.steps):
      step()
  per_op = collections.Counter()
  for event in prof.key_averages():
    per_op[event.key] += event.self_cpu_time_total * 1e-6 / FLAGS.steps
  per_class = collections.Counter()
  for name, seconds in per_op.items():
    per_class[torch_class(name)] += seconds
  return step_s, per_class, [(f'{n} ({torch_class(n)})', s)
                             for n, s in per_op.most_common(FLAGS.top)]


def print_side(title: str, step_s: float, per_class: dict[str, float],
               top: list[tuple[str, float]]) -> None:
  traced = sum(per_class.values())
  print(f'\n{title}: {step_s * 1e3:.1f} ms per step ({FLAGS.batch / step_s:.1f} img/s) '
        f'unprofiled; {traced * 1e3:.1f} ms of op time traced per step')
  print(f'{"class":<30} {"ms/step":>9} {"share":>7}')
  for cls in CLASSES:
    if per_class.get(cls):
      print(f'{cls:<30} {per_class[cls] * 1e3:>9.2f} {per_class[cls] / traced:>7.1%}')
  print(f'slowest {len(top)} ops:')
  for name, seconds in top:
    print(f'  {seconds * 1e3:8.2f} ms  {name}')


def main(argv):
  del argv
  print(f'CLAN {FLAGS.backbone} (width {FLAGS.width}), {FLAGS.size}x{FLAGS.size}, batch '
        f'{FLAGS.batch}, {FLAGS.num_classes} classes, float32, JAX {jax.__version__} on '
        f'{jax.devices()[0].device_kind}, {os.cpu_count()} CPUs; load average '
        f'{", ".join(f"{x:.2f}" for x in os.getloadavg())}; XLA_FLAGS={os.environ["XLA_FLAGS"]}')
  print_side('JAX (XLA:CPU)', *jax_profile())
  if FLAGS.torch:
    import torch  # pylint: disable=g-import-not-at-top
    print_side(f'PyTorch {torch.__version__} eager ({torch.get_num_threads()} threads)',
               *torch_profile())
  sys.stdout.flush()


if __name__ == '__main__':
  app.run(main)
