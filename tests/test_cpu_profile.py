"""benchmarks/cpu_profile.py and cpu_convolutions.py at a tiny size: every class and role found."""
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_profile_classes_the_ops_of_both_steps():
  result = subprocess.run(
      [sys.executable, '-m', 'benchmarks.cpu_profile', '--size=32', '--batch=4', '--width=4',
       '--num_classes=3', '--steps=2'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  jax_side, torch_side = result.stdout.split('PyTorch')[-2:]
  ms = lambda side, cls: float(re.search(rf'^{re.escape(cls)} +([\d.]+)', side, re.M).group(1))
  # XLA's three convolutions of the step are each found, and take time.
  for cls in ('conv forward', 'conv input grad', 'conv filter grad'):
    assert ms(jax_side, cls) > 0, jax_side
  # PyTorch computes both gradients of a convolution in one op.
  assert ms(torch_side, 'conv forward') > 0 and ms(torch_side, 'conv backward (input + filter)') > 0


@pytest.mark.slow
def test_convolution_benchmark_times_every_role_on_both_sides():
  result = subprocess.run(
      [sys.executable, '-m', 'benchmarks.cpu_convolutions', '--batch=2', '--size=32',
       '--width=4', '--calls=1'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = re.findall(
      r'^(stem 7x7/2|layer\d 3x3) +\[[\d, ]+\] +([a-z +]+?) +([\d.]+) +([\d.]+) +[\d.]+x$',
      result.stdout, re.M)
  # The stem's forward and filter gradient; every stage's three roles.
  assert [(name, role) for name, role, *_ in rows] == [
      ('stem 7x7/2', 'forward'), ('stem 7x7/2', 'filter gradient'),
      *((f'layer{i} 3x3', role) for i in range(1, 5)
        for role in ('forward', 'filter gradient', 'input + filter gradients'))], result.stdout
  assert all(float(xla) > 0 and float(torch) > 0 for *_, xla, torch in rows)
