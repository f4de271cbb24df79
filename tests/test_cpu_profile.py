"""benchmarks/cpu_profile.py at a tiny size: both sides' tables, every convolution role found."""
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
