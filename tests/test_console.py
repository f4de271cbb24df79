"""The console of a run: one short line per log step and per evaluation, no library noise.

Everything else, every metric included, still reaches TensorBoard.
"""
import logging
import os
import re
import subprocess
import sys
from unittest import mock

import pytest

from clan_jax.training import console
from tests import tensorboard_scalars

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What the libraries printed before, and the person running a program has no use for.
NOISE = (
    'oneDNN custom operations',  # TensorFlow's import
    'absl::InitializeLog',  # likewise
    "Unable to initialize backend 'tpu'",  # JAX on a host without a TPU
    'has no dataset_info.json',  # TFDS, preparing a dataset
    'Using custom data configuration',  # TFDS, a synthetic dataset
    'Constructing tf.data.Dataset',  # TFDS, each read
    'Creating a tf.data.Dataset reading',  # likewise
    '[process=0]',  # orbax
    'checkpoint_manager.py:',  # likewise
    'logging_writer.py:',  # clu's dump of every metric
    'Setting work unit notes',  # clu's progress report
)
# absl's prefix: severity, date, time, thread, file:line.
LOG_LINE = re.compile(r'^[IWEF]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] (.*)$')
TRAIN_LINE = re.compile(r'step (\d+)/4: loss (\d+\.\d{4}), top-1 \d+\.\d%, lr [\d.e-]+, '
                        r'[\d,]+ images/s, ETA [\dhms]+')
EVALUATION_LINE = re.compile(r'evaluation at step (\d+)/4: test top-1 \d+\.\d\d%, '
                             r'validation top-1 \d+\.\d\d%')


@pytest.fixture(scope='module')
def run(data_dir, tmp_path_factory):
  """train.py for 4 steps, a line every 2 and an evaluation (test and validation) every 2."""
  workdir = tmp_path_factory.mktemp('console') / 'workdir'
  process = subprocess.run(
      [sys.executable, 'train.py', '--config=configs/test.py', f'--workdir={workdir}',
       f'--config.data.data_dir={data_dir}', '--config.mesh.data=1',
       '--config.num_train_steps=4', '--config.log_every_steps=2',
       '--config.data.validation_percent=25', '--config.eval_every_epochs=0.67'],
      cwd=REPO, capture_output=True, text=True, timeout=900)
  assert process.returncode == 0, process.stderr[-3000:]
  return workdir, process.stderr


def _messages(stderr: str) -> list[str]:
  return [m.group(1) for m in map(LOG_LINE.match, stderr.splitlines()) if m]


@pytest.mark.slow
def test_one_short_line_per_log_step_and_per_evaluation(run):
  workdir, stderr = run
  lines = [line for line in stderr.splitlines() if LOG_LINE.match(line)]
  train = [line for line in lines if TRAIN_LINE.search(line)]
  evaluations = [line for line in lines if EVALUATION_LINE.search(line)]
  assert [TRAIN_LINE.search(line).group(1) for line in train] == ['2', '4'], stderr[-3000:]
  assert [EVALUATION_LINE.search(line).group(1) for line in evaluations] == ['2', '4']
  for line in train + evaluations:
    assert len(line) < 160, line
  # The console's loss is the one in TensorBoard.
  losses = tensorboard_scalars.read(workdir)['train/loss']
  for line in train:
    step, loss = TRAIN_LINE.search(line).groups()
    assert loss == f'{losses[int(step)]:.4f}'
  # No log line is a dump of metrics or of the config.
  assert max(len(line) for line in lines) < 300, max(lines, key=len)
  assert not [m for m in _messages(stderr) if 'train/' in m or 'Hyperparameters' in m]


@pytest.mark.slow
def test_library_noise_is_held_back(run):
  _, stderr = run
  assert [text for text in NOISE if text in stderr] == []


@pytest.mark.slow
def test_tensorboard_holds_every_metric(run):
  workdir, _ = run
  scalars = tensorboard_scalars.read(workdir)
  both = {2, 4}
  branches = [tag[len('eval/top1_'):] for tag in scalars
              if tag.startswith('eval/top1_') and tag != 'eval/top1_combined']
  assert len(branches) == 4  # layer2, layer3, top, refined
  summed = ['loss', 'accuracy', 'learning_rate', 'nonfinite'] + [
      f'{metric}_{branch}' for metric in ('loss', 'accuracy') for branch in branches]
  for name in summed:
    assert set(scalars[f'train/{name}']) == both, name
  diagnostics = {tag for tag in scalars if tag.startswith('train/')} - {
      f'train/{name}' for name in summed}
  assert diagnostics, 'the diagnostics reach TensorBoard'
  for split in ('eval', 'validation'):
    for name in ['loss', 'num_examples'] + [f'top{k}_{b}' for k in (1, 5)
                                            for b in ['combined', *branches]]:
      assert set(scalars[f'{split}/{name}']) == both, f'{split}/{name}'
  for step in both:
    assert scalars['images_per_sec'][step] == pytest.approx(8 * scalars['steps_per_sec'][step])
    assert scalars['uptime'][step] > 0


@pytest.mark.slow
def test_a_cli_program_holds_back_the_same_noise(run):
  workdir, _ = run
  process = subprocess.run(
      [sys.executable, '-m', 'clan_jax.cli.evaluate', f'--checkpoint={workdir}'],
      cwd=REPO, capture_output=True, text=True, timeout=900)
  assert process.returncode == 0, process.stderr[-3000:]
  assert [text for text in NOISE if text in process.stderr] == []


def test_speed_leaves_out_evaluations_and_the_eta_keeps_them(caplog):
  caplog.set_level(logging.INFO)
  # Created at 0; step 1 done (compiled) at 10; an evaluation from 12 to 15;
  # step 5's line at 18; step 9's at 22.
  clock = iter([0.0, 10.0, 12.0, 15.0, 18.0, 22.0]).__next__
  writer = mock.Mock()
  progress = console.Console(total_steps=101, batch_size=40, writer=writer, clock=clock)
  progress.step_done(1)
  for step in range(2, 6):
    progress.step_done(step)
  with progress.paused():
    pass
  results = {'loss': 1.23456, 'accuracy': 0.5, 'learning_rate': 0.01, 'loss_top': 9.0}
  progress.train(5, results)
  progress.evaluation(5, {'test': 0.5844, 'validation': 0.6})
  progress.train(9, results)
  assert caplog.messages == [
      # 4 steps in 8 s less 3 s of evaluation: 32 images/s; 96 steps left at
      # 2 s a step, the evaluation included.
      'step 5/101: loss 1.2346, top-1 50.0%, lr 0.01, 32 images/s, ETA 3m12s',
      'evaluation at step 5/101: test top-1 58.44%, validation top-1 60.00%',
      'step 9/101: loss 1.2346, top-1 50.0%, lr 0.01, 40 images/s, ETA 2m18s']
  assert writer.write_scalars.call_args_list == [
      mock.call(5, {'steps_per_sec': pytest.approx(0.8), 'images_per_sec': pytest.approx(32),
                    'uptime': 18.0}),
      mock.call(9, {'steps_per_sec': 1.0, 'images_per_sec': 40.0, 'uptime': 22.0})]
