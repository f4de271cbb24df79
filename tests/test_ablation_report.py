"""The ablation report's statistics: per-seed values, paired differences, collapsed runs."""
import math
import pathlib

import numpy as np
import pytest

from clan_jax.experiments import ablation, ablation_report

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(test_top1: float, validation: float = 0.5) -> dict:
  """A run record whose last step (2) has combined test top-1 `test_top1`."""
  return {'seconds': 1.0, 'history': {
      ablation_report.VALIDATION: {'1': validation - 0.1, '2': validation},
      'eval/top1_combined': {'1': 0.0, '2': test_top1},
      'eval/top1_top': {'1': 0.0, '2': test_top1 - 0.01}}}


def test_a_run_is_read_at_its_last_evaluation_or_its_best_on_validation():
  # Steps as JSON writes them; the best validation (step 20) is not the last.
  history = {ablation_report.VALIDATION: {'10': 0.5, '20': 0.9, '30': 0.8, '40': 0.8},
             'eval/top1_combined': {'10': 0.4, '20': 0.6, '30': 0.7, '40': 0.75}}
  assert ablation_report.selected(history, 'final') == (40, 0.8, {'combined': 0.75})
  assert ablation_report.selected(history, 'best_validation') == (20, 0.9, {'combined': 0.6})
  # Ties on validation go to the earliest step.
  history[ablation_report.VALIDATION]['20'] = 0.8
  assert ablation_report.selected(history, 'best_validation')[0] == 20
  with pytest.raises(ValueError, match="select='best'; allowed: \\['final', 'best_validation'\\]"):
    ablation_report.selected(history, 'best')


def test_paired_difference_and_its_standard_error():
  a = {0: 80.0, 1: 70.0, 2: 75.0, 7: 99.0}
  b = {0: 78.0, 1: 69.0, 2: 70.0}
  diff, error, n = ablation_report.paired_difference(a, b)
  differences = np.array([2.0, 1.0, 5.0])  # seed 7 has no pair
  assert n == 3
  assert diff == pytest.approx(differences.mean())
  assert error == pytest.approx(differences.std(ddof=1) / math.sqrt(3))
  assert math.isnan(ablation_report.paired_difference({0: 1.0}, {0: 2.0})[1])


def test_collapsed_runs_are_those_far_below_the_median():
  assert ablation_report.collapsed({0: 70.0, 1: 72.0, 2: 13.0, 3: 57.0, 4: 71.0}) == {2}
  assert ablation_report.collapsed({0: 70.0, 1: 72.0, 2: 60.0}) == set()


def test_summary_tables_per_seed_with_paired_differences_and_flags():
  plain = [0.60, 0.62, 0.58, 0.61, 0.20]
  clan = [0.65, 0.66, 0.64, 0.66, 0.63]
  runs = {**{('plain', 0.1, s): _run(v) for s, v in enumerate(plain)},
          **{('clan', 0.1, s): _run(v) for s, v in enumerate(clan)},
          # A worse rate on validation is not chosen, whatever its test accuracy.
          **{('clan', 0.5, s): _run(0.99, validation=0.1) for s in range(5)}}
  table, chosen = ablation_report.summarize(runs, 'final')
  assert chosen == {'plain': 0.1, 'clan': 0.1}
  per_seed = [line for line in table.splitlines() if line.startswith(('| plain | 60', '| clan | 65'))]
  assert per_seed[0].startswith('| plain | 60.0 | 62.0 | 58.0 | 61.0 | 20.0† |')
  differences = 100 * (np.array(clan) - np.array(plain))
  expected = (f'{differences.mean():+.1f} ± '
              f'{differences.std(ddof=1) / math.sqrt(5):.1f} (5)')
  assert f'| clan | {expected} |' in table.splitlines()
  assert 'plain seed 4 (20.0)' in table and 'collapsed' in table
  # The per-branch table: the mean ± std of every seed, the collapsed one included.
  assert f'**{100 * np.mean(plain):.1f} ± {100 * np.std(plain, ddof=1):.1f}**' in table


def test_validation_plot_shows_every_seed(tmp_path):
  runs = {(v, 0.1, s): _run(0.5 + 0.01 * s) for v in ('plain', 'clan') for s in range(3)}
  _, chosen = ablation_report.summarize(runs, 'best_validation')
  path = tmp_path / 'validation.png'
  ablation_report.plot_validation(runs, chosen, str(path))
  assert path.stat().st_size > 1000


@pytest.mark.parametrize('page, records', [
    ('README.md', 'docs/ablation_10_per_class/draw0'),
    ('docs/ablation_study.md', 'docs/ablation_10_per_class/draw0'),
    ('docs/ablation_study.md', 'docs/ablation_10_per_class/draw1')])
def test_the_published_tables_are_those_of_the_committed_records(page, records):
  plan = ablation.study_plan(str(REPO / records), ablation.VARIANTS, range(5), [0.01])
  runs = {key: ablation.finished_run(workdir) for key, workdir in plan.items()}
  assert all(runs.values())
  table, _ = ablation_report.summarize(runs, 'final')
  per_seed, pairs = table.split('\n\n')[1:3]
  # The pages print the minus sign as such.
  text = (REPO / page).read_text().replace('\u2212', '-')
  assert per_seed in text
  assert pairs in text
