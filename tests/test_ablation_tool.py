"""The ablation tool end to end: paired runs, its tables and plot, a stopped run, and a re-run
that skips. Choosing a learning rate on validation is tests/test_ablation_report.py's."""
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
             # One source step: the fault below stops step 2 of the first run, not this.
             '--config.init.source_pretraining.num_train_steps=1',
             f'--config.data.data_dir={tmp_path / "data"}', '--variants=plain,clan',
             '--seeds=0,1', '--learning_rates=0.05', '--config.eval_every_epochs=1',
             '--jobs=2']
  # First, one run stopped by SIGTERM: the study stops, records nothing for
  # it, and the next call resumes it.
  stopped_run = root / 'plain' / 'lr0.05' / 'seed0'
  stopped = subprocess.run(
      [sys.executable, 'tests/faults.py', *command[3:-5], '--variants=plain', '--seeds=0',
       '--learning_rates=0.05', '--config.eval_every_epochs=1'], cwd=REPO,
      capture_output=True, text=True, timeout=900,
      env={**os.environ, 'CLAN_JAX_FAULT': 'sigterm:2',
           'CLAN_JAX_FAULT_MODULE': 'clan_jax.cli.ablate'})
  assert stopped.returncode == 0, stopped.stderr[-3000:]
  assert stopped.stdout.strip().splitlines()[-1] == (
      f'Stopped: {stopped_run} saved a checkpoint and will resume; run the same command to '
      'go on with the study.')
  assert (stopped_run / 'checkpoints').is_dir()
  assert not (stopped_run / 'ablation_run.json').exists()
  assert not (root / 'ablation.md').exists()

  first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert first.returncode == 0, first.stderr[-3000:]
  table = (root / 'ablation.md').read_text()
  rows = [line for line in table.splitlines() if line.startswith('| plain')
          or line.startswith('| clan')]
  # Per branch, per seed, then the pair: clan - plain over seeds 0 and 1.
  assert len(rows) == 5 and all('±' in row for row in rows)
  assert rows[4].startswith('| clan | ') and rows[4].endswith(' (2) |')
  assert os.path.getsize(root / 'validation.png') > 1000
  second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert second.returncode == 0, second.stderr[-3000:]
  assert second.stderr.count('finished earlier, skipped') == 4
  assert (root / 'ablation.md').read_text() == table
