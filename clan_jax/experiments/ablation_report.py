"""Reads the ablation's runs back from their TensorBoard logs; writes its table and plot.

A run's history is {tag: {step: value}} for the 'eval/top1_*' (test) and
'validation/top1_*' scalars that `train.py` writes at every evaluation.
"""
from collections.abc import Mapping
import glob
import os

import numpy as np
import tensorflow as tf

VALIDATION = 'validation/top1_combined'


def read_history(workdir: str) -> dict[str, dict[int, float]]:
  """{tag: {step: value}} of the top-1 scalars in `workdir`'s event files.

  A resumed run appends to new event files; a step logged twice keeps its
  last value.
  """
  history: dict[str, dict[int, float]] = {}
  for path in sorted(glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))):
    for event in tf.compat.v1.train.summary_iterator(path):
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


def selected(history: Mapping[str, Mapping]) -> tuple[int, dict[str, float]]:
  """(the step of best validation top-1, the test top-1 of every branch there).

  Ties go to the earliest step.
  """
  history = _steps(history)
  validation = history[VALIDATION]
  step = max(sorted(validation), key=lambda s: validation[s])
  test = {tag[len('eval/top1_'):]: values[step] for tag, values in history.items()
          if tag.startswith('eval/top1_')}
  return step, test


def summarize(runs: Mapping[tuple[str, float, int], Mapping]
              ) -> tuple[str, dict[str, float]]:
  """The markdown table, and each variant's learning rate chosen on validation.

  Args:
    runs: {(variant, learning rate, seed): {'history': ..., 'seconds': ...}}.
  """
  variants = list(dict.fromkeys(v for v, _, _ in runs))
  chosen = {}
  for variant in variants:
    rates = sorted({r for v, r, _ in runs if v == variant})
    mean_validation = {
        rate: np.mean([max(_steps(run['history'])[VALIDATION].values())
                       for (v, r, _), run in runs.items() if (v, r) == (variant, rate)])
        for rate in rates}
    chosen[variant] = max(rates, key=lambda r: mean_validation[r])
  # In the model's output order: the variant with most branches lists them first.
  per_run = sorted((list(selected(run['history'])[1]) for (v, r, _), run in runs.items()
                    if chosen[v] == r), key=len, reverse=True)
  branches = list(dict.fromkeys(b for names in per_run for b in names if b != 'combined'))
  header = ['variant', 'lr', 'seeds', 'validation top-1', *[f'test `{b}`' for b in branches],
            '**test combined**']
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for variant in variants:
    picked = [run for (v, r, _), run in runs.items() if v == variant and r == chosen[v]]
    validation = [max(_steps(run['history'])[VALIDATION].values()) for run in picked]
    tests = [selected(run['history'])[1] for run in picked]
    cells = [variant, f'{chosen[variant]:g}', str(len(picked)), _mean_std(validation)]
    cells += [_mean_std([t[b] for t in tests]) if b in tests[0] else '' for b in branches]
    cells.append(f"**{_mean_std([t['combined'] for t in tests])}**")
    lines.append('| ' + ' | '.join(cells) + ' |')
  note = ('\nTop-1 %, mean ± sample standard deviation over seeds; test accuracy at '
          'each run\'s best validation step; lr chosen per variant by mean best '
          'validation top-1.\n')
  return '\n'.join(lines) + '\n' + note, chosen


def _mean_std(values) -> str:
  values = 100 * np.asarray(values, np.float64)
  std = values.std(ddof=1) if len(values) > 1 else 0.0
  return f'{values.mean():.1f} ± {std:.1f}'


def plot_validation(runs: Mapping[tuple[str, float, int], Mapping],
                    chosen: Mapping[str, float], path: str) -> None:
  """Validation top-1 against step, mean over seeds, one line per variant."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  for variant, rate in chosen.items():
    curves = [_steps(run['history'])[VALIDATION] for (v, r, _), run in runs.items()
              if v == variant and r == rate]
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    mean = [100 * np.mean([c[s] for c in curves]) for s in steps]
    ax.plot(steps, mean, marker='o', label=f'{variant} (lr {rate:g})')
  ax.set_xlabel('step')
  ax.set_ylabel('validation top-1 (%), mean over seeds')
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
