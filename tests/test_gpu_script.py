"""benchmarks/gpu.sh, at tiny sizes on a CPU, where TensorFlow cannot be imported.

The GPU machines have no TensorFlow (nor tensorflow_datasets): here both are
shadowed by packages that record the attempt and then fail as a missing
module would, so the script fails if anything on its path imports them.
"""
import os
import subprocess
import sys

import pytest

# Every test here starts programs or trains for a while.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HIDDEN = ('tensorflow', 'tensorflow_datasets')
TINY = {'CLAN_BENCH_SIZE': '32', 'CLAN_BENCH_BATCH': '2', 'CLAN_BENCH_BACKBONE': 'resnet18',
        'CLAN_BENCH_WIDTH': '4', 'CLAN_BENCH_NUM_CLASSES': '3', 'CLAN_BENCH_DTYPES': 'bfloat16',
        'CLAN_BENCH_REMAT': 'none', 'CLAN_BENCH_STEPS': '1', 'CLAN_BENCH_WARMUP': '0',
        # torch.compile's tracing, without minutes of code generation on a CPU.
        'CLAN_BENCH_TORCH_COMPILE_BACKEND': 'eager',
        'CLAN_BENCH_ATTENTION_SIZES': '8', 'CLAN_BENCH_ATTENTION_BATCH': '2',
        'CLAN_BENCH_BUDGET_S': '400'}


def _hide(root, attempts) -> None:
  for name in HIDDEN:
    os.makedirs(root / name)
    (root / name / '__init__.py').write_text(
        f'open({str(attempts)!r}, "a").write("{name}\\n")\n'
        f'raise ModuleNotFoundError("No module named {name!r} (hidden by the test)")\n')


def test_gpu_script_runs_every_row_without_tensorflow(tmp_path):
  attempts = tmp_path / 'imported'
  _hide(tmp_path / 'hidden', attempts)
  env = dict(os.environ, **TINY, PYTHON=sys.executable, JAX_PLATFORMS='cpu',
             CLAN_BENCH_WHEELS=str(tmp_path / 'no_wheels'),
             PYTHONPATH=os.pathsep.join([str(tmp_path / 'hidden'), REPO]))
  result = subprocess.run(['bash', 'benchmarks/gpu.sh'], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert not attempts.exists(), attempts.read_text()
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  out = result.stdout
  assert 'Python ' in out and 'jax ' in out and 'torch ' in out  # the versions
  table = out.split('attention\n')[1].split('==')[0].strip().splitlines()
  assert [line[:22].strip() for line in table[:3]] == [
      'JAX bf16', 'torch bf16 eager', 'torch bf16 compiled'], table
  assert table[0].endswith('layer2 blockwise, layer3 blockwise'), table  # no cuDNN on a CPU
  for line in table[1:3]:
    assert line.split()[-2].endswith('x'), line  # JAX's throughput over this row's
  assert 'model FLOPs per step, counted' in out
  memory = out.split('auto ran\n')[1].splitlines()[0]
  assert memory.split()[0] == '64' and memory.endswith('blockwise'), memory
