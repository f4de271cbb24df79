"""Ablation study: plain backbone, mid block only, top block only and both, on one config.

The command is `python -m clan_jax.cli.ablate`; its docstring gives the protocol.
"""
from collections.abc import Sequence
from concurrent import futures
import json
import multiprocessing
import time

from absl import logging
import ml_collections

from clan_jax import storage
from clan_jax.data import input_pipeline
from clan_jax.experiments import ablation_report, source_pretraining
from clan_jax.training import config_validation, trainer
from clan_jax.workdir import compatibility

# name: (config.model.use_mid_block, use_top_block). The names are those of
# CLAN's default blocks (clca: the mid-level block only, clsa: the top-level
# block only, clan: both), whatever blocks config.model.mid_block / top_block
# name; study records are kept under them.
VARIANTS = {
    'plain': (False, False),
    'clca': (True, False),
    'clsa': (False, True),
    'clan': (True, True),
}
RUN_FILE = 'ablation_run.json'
REPORT_FILE = 'ablation.md'
PLOT_FILE = 'validation.png'


def run_config(base: ml_collections.ConfigDict, variant: str, seed: int,
               learning_rate: float, validation_percent: int) -> ml_collections.ConfigDict:
  """The base config with one variant's switches, seed and learning rate.

  `validation_percent` applies when the base config holds out nothing.
  """
  # A copy without old field names, which the switches set here would leave stale.
  config = compatibility.without_old_names(base)
  config.model.use_mid_block, config.model.use_top_block = VARIANTS[variant]
  config.seed = seed
  config.optim.learning_rate = learning_rate
  if not config.data.validation_percent:
    config.data.validation_percent = validation_percent
  return config


def finished_run(workdir: str) -> dict | None:
  """The record of a run that finished in `workdir` earlier, or None."""
  record_path = storage.path(workdir) / RUN_FILE
  if not record_path.exists():
    return None
  return json.loads(record_path.read_text())


class Stopped(Exception):
  """A run was stopped before its end (SIGTERM, Ctrl-C): the study stops there."""


def run_once(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  """Trains (or resumes) one run; returns what `ablation_report` reads.

  A run stopped before its end returns None and records nothing, so that the
  next study resumes it instead of counting it as finished.
  """
  start = time.time()
  if 'stopped' in trainer.train_and_evaluate(config, workdir):
    return None
  record = {'seconds': time.time() - start,
            'history': ablation_report.read_history(workdir)}
  (storage.path(workdir) / RUN_FILE).write_text(json.dumps(record))
  return record


def _run_in_process(config_dict: dict, workdir: str) -> dict:
  """`run_once` in a worker process, which receives the config as a plain dict."""
  return run_once(ml_collections.ConfigDict(config_dict), workdir)


def _log_finished(key: tuple[str, float, int], run: dict, select: str) -> None:
  step, _, test = ablation_report.selected(run['history'], select)
  logging.info('ablation: %s, learning rate %g, seed %d finished in %.1f min: test top-1 '
               '%.2f%% at step %d (select=%s).', *key, run['seconds'] / 60,
               100 * test['combined'], step, select)


def study_plan(root: str, variants: Sequence[str], seeds: Sequence[int],
               learning_rates: Sequence[float]) -> dict[tuple[str, float, int], str]:
  """Every run's workdir under `root`, keyed (variant, learning rate, seed), in training order."""
  # Learning rate, then seed, outermost: a study stopped early has every
  # variant on the same runs so far.
  return {(variant, rate, seed): str(storage.path(root) / variant / f'lr{rate:g}' / f'seed{seed}')
          for rate in learning_rates for seed in seeds for variant in variants}


def run_study(base: ml_collections.ConfigDict, root: str, *, variants: Sequence[str],
              seeds: Sequence[int], learning_rates: Sequence[float],
              validation_percent: int, select: str, jobs: int = 1
              ) -> tuple[str, dict]:
  """Every (variant, learning rate, seed) run under `root`, then the report.

  `jobs` runs train at a time, each in its own process. The source backbone
  of `base` (config.init.source_pretraining) is pretrained first, once, and
  every run starts from it. Runs that finished earlier are read back, not
  trained again; with none left to train, nothing is. Writes `root`/REPORT_FILE
  and `root`/PLOT_FILE, each run read at the step `select` names (one of
  ablation_report.SELECTIONS); returns the markdown report and the runs, keyed
  (variant, learning rate, seed).

  Raises:
    Stopped: a run stopped before its end (SIGTERM, Ctrl-C); it, and the runs
      not started, are left for the next call.
  """
  ablation_report.check_select(select)  # before anything trains
  plan = study_plan(root, variants, seeds, learning_rates)
  runs = {key: finished_run(workdir) for key, workdir in plan.items()}
  todo = {}
  for (variant, rate, seed), workdir in plan.items():
    if runs[variant, rate, seed]:
      logging.info('ablation: %s finished earlier, skipped.', workdir)
    else:
      logging.info('ablation: %s, learning rate %g, seed %d -> %s', variant, rate, seed,
                   workdir)
      if not todo:  # the source backbone, only when something is left to train
        base = source_pretraining.apply(base)
      # Every run's config is checked here, before any run trains.
      todo[variant, rate, seed] = config_validation.validate(
          run_config(base, variant, seed, rate, validation_percent))
  stopped = []
  if jobs == 1 or len(todo) < 2:
    for key, config in todo.items():
      runs[key] = run_once(config, plan[key])
      if runs[key] is None:
        stopped.append(plan[key])
        break
      _log_finished(key, runs[key], select)
  else:
    # Workers that each found the dataset missing would prepare it at once,
    # into the same directory, and all but one would fail: prepare it here.
    # The runs differ in model, seed and rate only, so they share one dataset.
    input_pipeline.get_dataset_builder(next(iter(todo.values())))
    # 'spawn': a forked child would inherit this process's JAX runtime threads.
    with futures.ProcessPoolExecutor(
        min(jobs, len(todo)), mp_context=multiprocessing.get_context('spawn')) as pool:
      pending = {pool.submit(_run_in_process, config.to_dict(), plan[key]): key
                 for key, config in todo.items()}
      for future in futures.as_completed(pending):
        runs[pending[future]] = future.result()
        if runs[pending[future]] is None:
          stopped.append(plan[pending[future]])
        else:
          _log_finished(pending[future], runs[pending[future]], select)
  if stopped:
    raise Stopped(f'Stopped: {", ".join(stopped)} saved a checkpoint and will resume; '
                  'run the same command to go on with the study.')
  table, chosen = ablation_report.summarize(runs, select)
  (storage.path(root) / REPORT_FILE).write_text(table)
  ablation_report.plot_validation(runs, chosen, storage.path(root) / PLOT_FILE)
  return table, runs
