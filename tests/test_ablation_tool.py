"""The ablation tool end to end: tuned, paired runs, its tables and plot, and a re-run that skips."""
import os
import subprocess
import sys

import pytest

from tests import test_docs

REPO = str(test_docs.REPO)


@pytest.mark.slow
def test_ablation_trains_pairs_and_reports_then_skips_finished_runs(tmp_path):
  root = tmp_path / 'ablation'
  # Two runs at a time, on a data directory of its own: the workers must not
  # both prepare the missing dataset.
  command = [sys.executable, '-m', 'clan_jax.cli.ablate', '--config=configs/default.py',
             f'--workdir={root}', *test_docs.TINY,
             f'--config.data.data_dir={tmp_path / "data"}', '--variants=plain,clan',
             '--seeds=0,1', '--learning_rates=0.05,0.1', '--config.eval_every_epochs=1',
             '--jobs=2']
  first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert first.returncode == 0, first.stderr[-3000:]
  table = (root / 'ablation.md').read_text()
  rows = [line for line in table.splitlines() if line.startswith('| plain')
          or line.startswith('| clan')]
  # Per branch, then per seed with the paired difference: two rows per variant.
  assert len(rows) == 4 and all('±' in row for row in rows)
  assert rows[3].split(' | ')[-1].endswith('(2) |')  # clan - plain over seeds 0 and 1
  assert os.path.getsize(root / 'validation.png') > 1000
  second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert second.returncode == 0, second.stderr[-3000:]
  assert second.stderr.count('finished earlier, skipped') == 8
  assert (root / 'ablation.md').read_text() == table
