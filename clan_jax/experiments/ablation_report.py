"""Reads the ablation's runs back from their TensorBoard logs; writes its tables and plot.

A run's history is {tag: {step: value}} for the 'eval/top1_*' (test) and
'validation/top1_*' scalars that `train.py` writes at every evaluation.

Each run is read at one step, by one of SELECTIONS: 'final', its last
evaluation (the run at convergence; validation then chooses only the learning
rate), or 'best_validation', the step of its best validation top-1. A small
held-out split makes the second a noisy pick: with 64 validation images, one
image is 1.6 points, and the best step can be an early one.

The report is a statistic over seeds: per variant, the test top-1 of every
seed, their mean and sample standard deviation, and the difference of every
two variants paired by seed, with its standard error. A run far below its
variant's median (COLLAPSE_FRACTION) is flagged, not silently averaged.
"""
from collections.abc import Mapping, Sequence
import math
import os

import numpy as np
import tensorflow as tf

from clan_jax import storage

VALIDATION = 'validation/top1_combined'
# A run below this fraction of its variant's median test top-1 collapsed.
COLLAPSE_FRACTION = 0.8
COLLAPSED_MARK = '†'
SELECTIONS = ('final', 'best_validation')

Runs = Mapping[tuple[str, float, int], Mapping]  # (variant, lr, seed) -> run record


def read_history(workdir: str) -> dict[str, dict[int, float]]:
  """{tag: {step: value}} of the top-1 scalars in `workdir`'s event files.

  A resumed run appends to new event files; a step logged twice keeps its
  last value.
  """
  history: dict[str, dict[int, float]] = {}
  for path in sorted(storage.path(workdir).glob('events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        if value.tag.startswith(('eval/top1_', 'validation/top1_')):
          scalar = float(tf.make_ndarray(value.tensor)) if value.HasField(
              'tensor') else value.simple_value
          history.setdefault(value.tag, {})[int(event.step)] = scalar
  if VALIDATION not in history:
    raise ValueError(f'{workdir} has no {VALIDATION!r} scalars: was it trained '
                     'with config.data.validation_percent > 0?')
  return history


def _steps(history: Mapping[str, Mapping]) -> dict[str, dict[int, float]]:
  # JSON turns the integer steps into strings.
  return {tag: {int(s): v for s, v in values.items()} for tag, values in history.items()}


def check_select(select: str) -> None:
  if select not in SELECTIONS:
    raise ValueError(f'select={select!r}; allowed: {list(SELECTIONS)}.')


def _selected_step(validation: Mapping[int, float], select: str) -> int:
  check_select(select)
  if select == 'final':
    return max(validation)
  return max(sorted(validation), key=lambda s: validation[s])  # ties: the earliest step


def selected(history: Mapping[str, Mapping], select: str
             ) -> tuple[int, float, dict[str, float]]:
  """(the step `select` reads, validation top-1 there, the test top-1 of every branch there)."""
  history = _steps(history)
  validation = history[VALIDATION]
  step = _selected_step(validation, select)
  test = {tag[len('eval/top1_'):]: values[step] for tag, values in history.items()
          if tag.startswith('eval/top1_')}
  return step, validation[step], test


def choose_rates(runs: Runs, select: str) -> dict[str, float]:
  """Each variant's learning rate: the best mean (over seeds) of validation top-1 at
  the step `select` reads."""
  chosen = {}
  for variant in dict.fromkeys(v for v, _, _ in runs):
    rates = sorted({r for v, r, _ in runs if v == variant})
    mean_validation = {
        rate: np.mean([selected(run['history'], select)[1]
                       for (v, r, _), run in runs.items() if (v, r) == (variant, rate)])
        for rate in rates}
    chosen[variant] = max(rates, key=lambda r: mean_validation[r])
  return chosen


def _chosen_runs(runs: Runs, chosen: Mapping[str, float], variant: str) -> dict[int, Mapping]:
  """{seed: run} of `variant` at its chosen learning rate."""
  return {s: run for (v, r, s), run in sorted(runs.items()) if v == variant and r == chosen[v]}


def collapsed(values: Mapping[int, float]) -> set[int]:
  """The seeds whose value is below COLLAPSE_FRACTION of the median of `values`."""
  median = float(np.median(list(values.values())))
  return {seed for seed, value in values.items() if value < COLLAPSE_FRACTION * median}


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]
                      ) -> tuple[float, float, int]:
  """(mean of a - b over their common seeds, its standard error, the number of seeds).

  The standard error is the sample standard deviation of the per-seed
  differences over sqrt(n): NaN with fewer than two common seeds.
  """
  seeds = sorted(set(a) & set(b))
  differences = np.asarray([a[s] - b[s] for s in seeds], np.float64)
  if len(seeds) < 2:
    return (float(differences.mean()) if seeds else math.nan), math.nan, len(seeds)
  return (float(differences.mean()),
          float(differences.std(ddof=1) / math.sqrt(len(seeds))), len(seeds))


def summarize(runs: Runs, select: str) -> tuple[str, dict[str, float]]:
  """The markdown report, and each variant's learning rate chosen on validation.

  Three tables: per-branch means; combined test top-1 per seed with mean and
  std, collapsed runs flagged; and the paired difference of every two variants.

  Args:
    runs: {(variant, learning rate, seed): {'history': ..., 'seconds': ...}}.
    select: which step of each run is read, one of SELECTIONS.
  """
  chosen = choose_rates(runs, select)
  variants = list(chosen)
  tests = {v: {s: selected(run['history'], select)[2]
               for s, run in _chosen_runs(runs, chosen, v).items()} for v in variants}
  combined = {v: {s: 100 * t['combined'] for s, t in tests[v].items()} for v in variants}
  # In the model's output order: the variant with most branches lists them first.
  per_run = sorted((list(t) for v in variants for t in tests[v].values()), key=len, reverse=True)
  branches = list(dict.fromkeys(b for names in per_run for b in names if b != 'combined'))

  header = ['variant', 'lr', 'seeds', 'validation top-1', *[f'test `{b}`' for b in branches],
            '**test combined**']
  lines = [_row(header), _rule(header)]
  for variant in variants:
    picked = _chosen_runs(runs, chosen, variant)
    validation = [100 * selected(run['history'], select)[1] for run in picked.values()]
    cells = [variant, f'{chosen[variant]:g}', str(len(picked)), _mean_std(validation)]
    cells += [_mean_std([100 * t[b] for t in tests[variant].values()])
              if b in next(iter(tests[variant].values())) else '' for b in branches]
    cells.append(f'**{_mean_std(list(combined[variant].values()))}**')
    lines.append(_row(cells))

  seeds = sorted({s for v in variants for s in combined[v]})
  header = ['variant', *[f'seed {s}' for s in seeds], 'mean ± std']
  lines += ['', _row(header), _rule(header)]
  flagged = []
  for variant in variants:
    values = combined[variant]
    down = collapsed(values)
    flagged += [(variant, s, values[s]) for s in sorted(down)]
    cells = [variant] + [
        (f'{values[s]:.1f}{COLLAPSED_MARK if s in down else ""}' if s in values else '')
        for s in seeds]
    cells.append(_mean_std(list(values.values())))
    lines.append(_row(cells))

  # Every pair once: a row's variant minus an earlier column's, seed by seed.
  header = ['paired difference ± s.e. (seeds): row - column', *variants[:-1]]
  lines += ['', _row(header), _rule(header)]
  for row, variant in enumerate(variants[1:], start=1):
    cells = [variant]
    for column, other in enumerate(variants[:-1]):
      if column < row:
        diff, error, n = paired_difference(combined[variant], combined[other])
        cells.append(f'{diff:+.1f} ± {error:.1f} ({n})')
      else:
        cells.append('')
    lines.append(_row(cells))
  lines.append('')
  step = {'final': 'last evaluation (at convergence)',
          'best_validation': 'best validation step'}[select]
  lines.append(f'Top-1 %, test and validation accuracy at each run\'s {step}; mean ± sample '
               'standard deviation over seeds; lr chosen per variant by mean validation '
               'top-1 there. A paired difference is the mean over seeds of (row - column) '
               'on the same seed, ± its standard error (std of the differences / '
               'sqrt(seeds)).')
  if flagged:
    lines.append(f'{COLLAPSED_MARK} collapsed: below {COLLAPSE_FRACTION:.0%} of its variant\'s '
                 'median, and still counted in the mean: ' + ', '.join(
                     f'{v} seed {s} ({value:.1f})' for v, s, value in flagged) + '.')
  else:
    lines.append(f'No run collapsed (none below {COLLAPSE_FRACTION:.0%} of its variant\'s '
                 'median).')
  return '\n'.join(lines) + '\n', chosen


def _row(cells: Sequence[str]) -> str:
  return '| ' + ' | '.join(cells) + ' |'


def _rule(header: Sequence[str]) -> str:
  return '|' + '---|' * len(header)


def _mean_std(values: Sequence[float]) -> str:
  values = np.asarray(values, np.float64)
  std = values.std(ddof=1) if len(values) > 1 else 0.0
  return f'{values.mean():.1f} ± {std:.1f}'


def plot_validation(runs: Runs, chosen: Mapping[str, float], path: str | os.PathLike) -> None:
  """Validation top-1 against step: every seed thin, the mean over seeds bold."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  for index, variant in enumerate(chosen):
    colour = f'C{index}'
    curves = [_steps(run['history'])[VALIDATION]
              for run in _chosen_runs(runs, chosen, variant).values()]
    for curve in curves:
      steps = sorted(curve)
      ax.plot(steps, [100 * curve[s] for s in steps], color=colour, alpha=0.3, lw=0.8)
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    mean = [100 * np.mean([c[s] for c in curves]) for s in steps]
    ax.plot(steps, mean, color=colour, lw=2, marker='o', ms=3,
            label=f'{variant} (lr {chosen[variant]:g}, {len(curves)} seeds)')
  ax.set_xlabel('step')
  ax.set_ylabel('validation top-1 (%): seeds thin, mean bold')
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  with storage.path(path).open('wb') as f:
    fig.savefig(f, format='png')
  plt.close(fig)
